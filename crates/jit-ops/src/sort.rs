//! Sorting: `torch.sort`, `argsort`, `topk` and `median` along one dim.
//!
//! On the host each line is sorted by the library (a stable merge sort per line, the
//! lines in parallel: [`ExternOp::Argsort`]). On the CUDA backend, and on the host
//! with `JIT_SORT=network` or [`set_sort_network`], a bitonic sorting network over
//! the positions of the sorted dim, padded to a power of two `m`: `log2(m) (log2(m) + 1) / 2` passes, each one fused kernel that
//! compares every position with its partner (`i xor j`) and keeps one of the two.
//! The network moves only the indices: each pass reads the values it compares with
//! the `gather` meta-op from the stored input, so a pass writes one i64 array. The
//! order is total, ties broken by the original position, so the sort is stable and
//! the result the same on every backend; NaN counts as larger than every number (last
//! ascending, first descending), as in PyTorch. The sorted values are a gather at
//! the indices: their gradient goes back to the original positions.

use crate::reduce::ReduceOps;
use crate::shape::ShapeOps;
use jit_core::{normalize_dim, BinaryOp, DType, Error, ExternOp, IndexExpr as E, Result, Var};
use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    static NETWORK: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Builds sorts on this thread from now on as the sorting network (`true`), the
/// one the CUDA backend runs, or as the host library's sort (`false`, the default
/// off CUDA unless `JIT_SORT=network` is set).
pub fn set_sort_network(on: bool) {
    NETWORK.with(|c| c.set(Some(on)));
}

/// Whether a sort built now is the sorting network: on the CUDA backend, or when
/// [`set_sort_network`] or `JIT_SORT=network` asks for it.
fn network() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    jit_core::flags().backend == jit_core::Backend::Cuda
        || NETWORK
            .with(Cell::get)
            .unwrap_or_else(|| *ENV.get_or_init(|| std::env::var("JIT_SORT").is_ok_and(|v| v.trim() == "network")))
}

/// Sorting along one dim. Dims may be negative.
pub trait SortOps {
    /// `torch.sort(x, dim, descending, stable=True)`: the sorted values and the
    /// original positions (i64) along `dim`.
    fn sort(&self, dim: isize, descending: bool) -> Result<(Var, Var)>;
    /// `torch.argsort(x, dim, descending, stable=True)`.
    fn argsort(&self, dim: isize, descending: bool) -> Result<Var>;
    /// `torch.topk(x, k, dim, largest, sorted=True)`: the `k` largest (or smallest)
    /// values along `dim`, in order, and their positions.
    fn topk(&self, k: usize, dim: isize, largest: bool) -> Result<(Var, Var)>;
    /// `torch.median(x, dim)`: the lower median along `dim` (element `(n - 1) / 2`
    /// of the ascending order; NaN if the line holds one) and its position, with
    /// `dim` removed.
    fn median(&self, dim: isize) -> Result<(Var, Var)>;
}

/// True where the element at `a` (value `av`, original position `ai`) comes after
/// the one at `b` in the order; positions `>= n` are padding and come last.
fn after(av: &Var, ai: &Var, bv: &Var, bi: &Var, n: usize, descending: bool) -> Result<Var> {
    let by_position = ai.gt(bi)?;
    let (larger, equal) = if av.dtype().is_float() {
        let (an, bn) = (av.ne(av)?, bv.ne(bv)?);
        // NaN is larger than every number and equal to NaN
        let gt = av.gt(bv)?.logical_or(an.logical_and(bn.logical_not())?)?;
        let lt = av.lt(bv)?.logical_or(bn.logical_and(an.logical_not())?)?;
        let eq = av.eq(bv)?.logical_or(an.logical_and(&bn)?)?;
        (if descending { lt } else { gt }, eq)
    } else {
        (if descending { av.lt(bv)? } else { av.gt(bv)? }, av.eq(bv)?)
    };
    let real = larger.logical_or(equal.logical_and(&by_position)?)?;
    let padding = ai.ge(n as i64)?.logical_or(bi.ge(n as i64)?)?;
    Var::where_(&padding, &by_position, &real)
}

/// The original positions in sorted order along the last dim of `x` (stored): the
/// library's sort of each line, or the network ([`network`]).
fn sorted_positions(x: &Var, descending: bool) -> Result<Var> {
    let n = x.shape()[x.ndim() - 1];
    if network() || x.numel() == 0 {
        return network_positions(x, descending);
    }
    let lines = Var::extern_op(ExternOp::Argsort { descending }, &[x.reshape(&[-1, n as isize])?])?;
    lines.reshape(&x.shape().iter().map(|&d| d as isize).collect::<Vec<_>>())
}

/// [`sorted_positions`] by the bitonic network.
fn network_positions(x: &Var, descending: bool) -> Result<Var> {
    let last = x.ndim() - 1;
    let n = x.shape()[last];
    let m = n.next_power_of_two();
    let mut shape = x.shape().to_vec();
    shape[last] = m;
    let pos = Var::index(&shape, last, DType::I64)?;
    // bits of the position by a bitwise and (no division in the kernels)
    let bit = |b: usize| pos.binary(BinaryOp::And, &Var::full(&shape, b as f64, DType::I64))?.ne(0);
    // the value `by` positions further along the sorted dim
    let ahead = |v: &Var, by: i64| -> Result<Var> {
        let mut exprs: Vec<E> = (0..v.ndim()).map(E::idx).collect();
        exprs[last] = E::idx(last) + by;
        v.reindex(v.shape(), exprs, 0.0, vec![])
    };
    let mut idx = pos.clone();
    let mut k = 2;
    while k <= m {
        let mut j = k / 2;
        while j >= 1 {
            // partner = pos xor j: j ahead where bit j is clear, j behind where it is
            // set; the pair sorts ascending where bit k of pos is clear
            let (bit_j, bit_k) = (bit(j)?, bit(k)?);
            let partner = Var::where_(&bit_j, ahead(&idx, -(j as i64))?, ahead(&idx, j as i64)?)?;
            let (mine, theirs) = (x.gather(last as isize, &idx)?, x.gather(last as isize, &partner)?);
            let mine_after = after(&mine, &idx, &theirs, &partner, n, descending)?;
            // the lower position of an ascending pair keeps the earlier element
            let flip = bit_j.ne(&bit_k)?;
            let take = mine_after.ne(&flip)?;
            idx = Var::where_(&take, &partner, &idx)?.materialize();
            j /= 2;
        }
        k *= 2;
    }
    idx.narrow(last as isize, 0, n)
}

impl SortOps for Var {
    fn sort(&self, dim: isize, descending: bool) -> Result<(Var, Var)> {
        if self.ndim() == 0 {
            if dim != 0 && dim != -1 {
                return Err(Error::Dim { op: "sort".into(), dim, ndim: 0, shape: vec![] });
            }
            return Ok((self.clone(), Var::zeros(&[], DType::I64)));
        }
        let d = normalize_dim("sort", dim, self.shape())?;
        let last = self.ndim() as isize - 1;
        let x = if self.dtype() == DType::Bool { self.cast(DType::U8) } else { self.clone() };
        let xt = x.transpose(d as isize, last)?.materialize();
        let idx = sorted_positions(&xt.detach(), descending)?;
        let values = self.transpose(d as isize, last)?.gather(last, &idx)?;
        Ok((values.transpose(d as isize, last)?, idx.transpose(d as isize, last)?))
    }

    fn argsort(&self, dim: isize, descending: bool) -> Result<Var> {
        Ok(self.sort(dim, descending)?.1)
    }

    fn topk(&self, k: usize, dim: isize, largest: bool) -> Result<(Var, Var)> {
        let d = normalize_dim("topk", dim, self.shape())?;
        let n = self.shape().get(d).copied().unwrap_or(1);
        if k > n {
            return Err(Error::argument(
                "topk",
                format!("k = {k} is larger than the {n} elements of dim {d} (shape {:?})", self.shape()),
            ));
        }
        let (v, i) = self.sort(dim, largest)?;
        if self.ndim() == 0 {
            return Ok((v, i));
        }
        Ok((v.narrow(d as isize, 0, k)?, i.narrow(d as isize, 0, k)?))
    }

    fn median(&self, dim: isize) -> Result<(Var, Var)> {
        let d = normalize_dim("median", dim, self.shape())?;
        let n = self.shape()[d];
        if n == 0 {
            return Err(Error::argument("median", format!("dim {d} of shape {:?} is empty", self.shape())));
        }
        let (v, i) = self.sort(dim, false)?;
        let (v, i) = (v.narrow(d as isize, (n - 1) / 2, 1)?, i.narrow(d as isize, (n - 1) / 2, 1)?);
        if !self.dtype().is_float() {
            return Ok((v.squeeze(d as isize)?, i.squeeze(d as isize)?));
        }
        // a line that holds NaN has the median NaN, at its first NaN
        let isnan = self.ne(self)?.cast(DType::F32);
        let first = isnan.argmax(d as isize, true)?;
        let nan = isnan.max(&[d as isize], true)?.gt(0.0)?;
        let v = Var::where_(&nan, f64::NAN, &v)?.cast(self.dtype());
        let i = Var::where_(&nan, &first, &i)?;
        Ok((v.squeeze(d as isize)?, i.squeeze(d as isize)?))
    }
}
