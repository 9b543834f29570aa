//! Data-dependent indexing beyond `gather` and `index_select` (in [`crate::shape`]):
//! `take_along_dim`, `scatter_add`, `scatter_reduce`, `index_add`, `masked_fill`,
//! `one_hot` and `embedding`, with PyTorch's names and semantics.
//!
//! They lower onto the `gather` and `scatter` meta-ops, so each costs one load (or
//! one combine) per index element, whatever the size of the indexed dim, and they
//! differentiate through each other: the gradient of a gather is a scatter-add
//! with the same index, and the gradient of a scatter-add is a gather.
//!
//! Indices are not read when the graph is built, so an index outside the indexed
//! dim is not an error as in PyTorch: a gather reads 0 there and a scatter skips
//! it. Scatters run without atomics, in an order fixed by the index (the same
//! result on every run).

use crate::shape::ShapeOps;
use jit_core::{normalize_dim, BinaryOp, DType, Error, MetaOp, ReduceOp, Result, Var};

/// How [`IndexOps::scatter_reduce`] combines the values that meet at one position
/// (PyTorch's `reduce` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScatterReduce {
    /// `"sum"`.
    Sum,
    /// `"prod"`.
    Prod,
    /// `"mean"` (floor division for integer dtypes, as PyTorch).
    Mean,
    /// `"amax"`.
    Amax,
    /// `"amin"`.
    Amin,
}

impl ScatterReduce {
    /// Parses PyTorch's spelling (`"sum"`, `"prod"`, `"mean"`, `"amax"`, `"amin"`).
    pub fn parse(name: &str) -> Result<ScatterReduce> {
        Ok(match name {
            "sum" => ScatterReduce::Sum,
            "prod" => ScatterReduce::Prod,
            "mean" => ScatterReduce::Mean,
            "amax" => ScatterReduce::Amax,
            "amin" => ScatterReduce::Amin,
            other => {
                return Err(Error::argument(
                    "scatter_reduce",
                    format!("reduce must be one of sum, prod, mean, amax, amin; got {other:?}"),
                ))
            }
        })
    }
}

/// Data-dependent indexing operators. Dims may be negative.
pub trait IndexOps {
    /// `torch.take_along_dim(self, index, dim)`: [`ShapeOps::gather`] after
    /// broadcasting `self` and `index` against each other in every dim but `dim`.
    fn take_along_dim(&self, index: &Var, dim: isize) -> Result<Var>;
    /// `self.scatter_add(dim, index, src)`: a copy of `self` where each `src[i]`
    /// (for `i` within `index`'s shape) is added at `i with i_dim := index[i]`.
    /// `index` has the rank of `self`, its dims at most `src`'s, and at most
    /// `self`'s outside `dim`.
    fn scatter_add(&self, dim: isize, index: &Var, src: &Var) -> Result<Var>;
    /// `self.scatter_reduce(dim, index, src, reduce, include_self)`: as
    /// [`IndexOps::scatter_add`] with another combination; with `include_self`
    /// false, the positions that receive values forget `self`'s value there.
    fn scatter_reduce(
        &self,
        dim: isize,
        index: &Var,
        src: &Var,
        reduce: ScatterReduce,
        include_self: bool,
    ) -> Result<Var>;
    /// `self.index_add(dim, index, source, alpha)`: slice `k` of `source` along
    /// `dim`, times `alpha`, is added to slice `index[k]` of `self`; `index` is 1-D
    /// and `source` has `self`'s shape with `index.len()` along `dim`.
    fn index_add(&self, dim: isize, index: &Var, source: &Var, alpha: f64) -> Result<Var>;
    /// `self.masked_fill(mask, value)`: `value` where the bool `mask` (broadcast to
    /// this shape) is true.
    fn masked_fill(&self, mask: &Var, value: f64) -> Result<Var>;
    /// `F.one_hot(self, num_classes)`: i64 of shape `self.shape + [num_classes]`,
    /// 1 at each integer's class. A value outside `0..num_classes` gives a row of
    /// zeros (PyTorch raises).
    fn one_hot(&self, num_classes: usize) -> Result<Var>;
}

/// `src` cut down to `shape` (the leading part of each dim), as PyTorch's scatters
/// read only the index-shaped corner of their source.
fn corner(op: &str, src: &Var, shape: &[usize]) -> Result<Var> {
    if src.ndim() != shape.len() || src.shape().iter().zip(shape).any(|(&s, &i)| i > s) {
        return Err(Error::shape(
            op,
            format!("the index of shape {shape:?} must have the rank of the source {:?} and fit in it", src.shape()),
        ));
    }
    let mut out = src.clone();
    for (d, (&s, &i)) in src.shape().iter().zip(shape).enumerate() {
        if i < s {
            out = out.narrow(d as isize, 0, i)?;
        }
    }
    Ok(out)
}

/// The common checks of the scatters: same rank and dtype of `x` and `src`; returns
/// the normalised dim and the part of `src` that is read.
fn scatter_operands(op: &str, x: &Var, dim: isize, index: &Var, src: &Var) -> Result<(usize, Var)> {
    let d = normalize_dim(op, dim, x.shape())?;
    if src.dtype() != x.dtype() {
        return Err(Error::dtype(
            op,
            format!("the source must have the dtype of self, got {} and {}", src.dtype(), x.dtype()),
        ));
    }
    if index.ndim() != x.ndim() {
        return Err(Error::shape(
            op,
            format!("the index of shape {:?} must have the rank of self {:?}", index.shape(), x.shape()),
        ));
    }
    Ok((d, corner(op, src, index.shape())?))
}

/// True for a pending `full(+0.0)` that takes no gradient: adding it to a scatter
/// sum changes nothing, so `zeros(...).index_add(...)` skips that pass.
fn is_plain_positive_zero(x: &Var) -> bool {
    matches!(x.op(), Some(MetaOp::Full { value }) if value == 0.0 && value.is_sign_positive()) && !x.requires_grad()
}

/// How many sources reach each position of `shape` (i64).
fn hits(dim: usize, index: &Var, shape: &[usize]) -> Result<Var> {
    Var::full(index.shape(), 1.0, DType::I64).scatter_indexed(ReduceOp::Sum, dim, index, shape)
}

impl IndexOps for Var {
    fn take_along_dim(&self, index: &Var, dim: isize) -> Result<Var> {
        let op = "take_along_dim";
        let d = normalize_dim(op, dim, self.shape())?;
        if index.ndim() != self.ndim() {
            return Err(Error::shape(
                op,
                format!("the index of shape {:?} must have the rank of the input {:?}", index.shape(), self.shape()),
            ));
        }
        // broadcast every dim but `dim`
        let mut xs = self.shape().to_vec();
        let mut is = index.shape().to_vec();
        for k in (0..self.ndim()).filter(|&k| k != d) {
            let (a, b) = (xs[k], is[k]);
            if a != b && a != 1 && b != 1 {
                return Err(Error::shape(
                    op,
                    format!(
                        "the input {:?} and the index {:?} do not broadcast at dim {k}",
                        self.shape(),
                        index.shape()
                    ),
                ));
            }
            let n = if a == 1 { b } else { a };
            xs[k] = n;
            is[k] = n;
        }
        self.broadcast_to_dims(&xs, &[])?.gather(d as isize, &index.broadcast_to_dims(&is, &[])?)
    }

    fn scatter_add(&self, dim: isize, index: &Var, src: &Var) -> Result<Var> {
        self.scatter_reduce(dim, index, src, ScatterReduce::Sum, true)
    }

    fn scatter_reduce(
        &self,
        dim: isize,
        index: &Var,
        src: &Var,
        reduce: ScatterReduce,
        include_self: bool,
    ) -> Result<Var> {
        let op = if reduce == ScatterReduce::Sum && include_self { "scatter_add" } else { "scatter_reduce" };
        let (d, src) = scatter_operands(op, self, dim, index, src)?;
        let meta = match reduce {
            ScatterReduce::Sum | ScatterReduce::Mean => ReduceOp::Sum,
            ScatterReduce::Prod => ReduceOp::Prod,
            ScatterReduce::Amax => ReduceOp::Max,
            ScatterReduce::Amin => ReduceOp::Min,
        };
        let s = src.scatter_indexed(meta, d, index, self.shape())?;
        let with_self = |s: &Var| -> Result<Var> {
            match reduce {
                ScatterReduce::Sum | ScatterReduce::Mean => self.binary(BinaryOp::Add, s),
                ScatterReduce::Prod => self.binary(BinaryOp::Mul, s),
                ScatterReduce::Amax => self.binary(BinaryOp::Max, s),
                ScatterReduce::Amin => self.binary(BinaryOp::Min, s),
            }
        };
        if reduce == ScatterReduce::Mean {
            let mut count = hits(d, index, self.shape())?;
            if include_self {
                count = count.try_add(1)?;
            }
            let total = if include_self { with_self(&s)? } else { s };
            let count = count.maximum(1)?.cast(self.dtype());
            // floor division for integers, as PyTorch
            let mean = total.binary(BinaryOp::Div, &count)?;
            return if include_self {
                Ok(mean)
            } else {
                Var::where_(&hits(d, index, self.shape())?.gt(0)?, &mean, self)
            };
        }
        if include_self {
            if reduce == ScatterReduce::Sum && is_plain_positive_zero(self) {
                // the scatter sums start from +0, so `+0 + s` is `s` bit for bit
                // (a sum from +0 is never -0, the one value `+0 + x` changes)
                return Ok(s);
            }
            return with_self(&s);
        }
        Var::where_(&hits(d, index, self.shape())?.gt(0)?, &s, self)
    }

    fn index_add(&self, dim: isize, index: &Var, source: &Var, alpha: f64) -> Result<Var> {
        let op = "index_add";
        let d = normalize_dim(op, dim, self.shape())?;
        if index.ndim() != 1 || index.dtype().is_float() || index.dtype() == DType::Bool {
            return Err(Error::shape(
                op,
                format!("the index must be a 1-D integer value, got {} of shape {:?}", index.dtype(), index.shape()),
            ));
        }
        let mut want = self.shape().to_vec();
        want[d] = index.shape()[0];
        if source.shape() != want.as_slice() {
            return Err(Error::shape(
                op,
                format!(
                    "the source must have shape {want:?} (self {:?} with the index's length at dim {d}), got {:?}",
                    self.shape(),
                    source.shape()
                ),
            ));
        }
        let others: Vec<usize> = (0..self.ndim()).filter(|&k| k != d).collect();
        let index = index.broadcast_to_dims(&want, &others)?;
        let source = if alpha == 1.0 { source.clone() } else { source.try_mul(alpha)?.cast(source.dtype()) };
        self.scatter_add(dim, &index, &source)
    }

    fn masked_fill(&self, mask: &Var, value: f64) -> Result<Var> {
        if mask.dtype() != DType::Bool {
            return Err(Error::dtype("masked_fill", format!("the mask must be bool, got {}", mask.dtype())));
        }
        let mask = mask.broadcast_as(self.shape()).map_err(|_| {
            Error::shape(
                "masked_fill",
                format!("the mask of shape {:?} does not broadcast to {:?}", mask.shape(), self.shape()),
            )
        })?;
        Var::where_(&mask, self.full_like(value), self)
    }

    fn one_hot(&self, num_classes: usize) -> Result<Var> {
        if self.dtype().is_float() || self.dtype() == DType::Bool {
            return Err(Error::dtype("one_hot", format!("needs integer class values, got {}", self.dtype())));
        }
        let mut shape = self.shape().to_vec();
        shape.push(num_classes);
        let classes = Var::index(&shape, self.ndim(), DType::I64)?;
        let values = self.cast(DType::I64).unsqueeze(-1)?.broadcast_as(&shape)?;
        Ok(values.eq(&classes)?.cast(DType::I64))
    }
}

/// `F.embedding(indices, weight, padding_idx)`: the rows of `weight` (`[num,
/// dim]`) picked by the integer `indices` of any shape, as `indices.shape + [dim]`.
/// Rows picked at `padding_idx` receive no gradient, as in PyTorch.
pub fn embedding(weight: &Var, indices: &Var, padding_idx: Option<usize>) -> Result<Var> {
    let op = "embedding";
    if weight.ndim() != 2 {
        return Err(Error::shape(op, format!("the weight must be 2-D [num, dim], got {:?}", weight.shape())));
    }
    if indices.dtype().is_float() || indices.dtype() == DType::Bool {
        return Err(Error::dtype(op, format!("the indices must be integers, got {}", indices.dtype())));
    }
    if let Some(p) = padding_idx.filter(|&p| p >= weight.shape()[0]) {
        return Err(Error::argument(
            op,
            format!("padding_idx {p} is outside the {} rows of the weight", weight.shape()[0]),
        ));
    }
    let flat = indices.reshape(&[-1])?;
    let mut rows = weight.index_select(0, &flat)?;
    if let Some(p) = padding_idx {
        let pad = flat.cast(DType::I64).eq(p as i64)?.unsqueeze(-1)?.broadcast_as(rows.shape())?;
        rows = Var::where_(&pad, rows.detach(), &rows)?;
    }
    let mut shape: Vec<isize> = indices.shape().iter().map(|&d| d as isize).collect();
    shape.push(weight.shape()[1] as isize);
    rows.reshape(&shape)
}
