//! Pooling (NCHW): max and average pooling with PyTorch's arguments, adaptive average
//! pooling, global average pooling. Windows are one `reindex` over the input (the
//! padding is its overflow value) and a reduction, so a pool fuses into one kernel.

use crate::reduce::ReduceOps;
use jit_core::{DType, Error, IndexExpr as E, ReduceOp, Result, Var};
use std::sync::Arc;

/// Kernel, stride, padding, dilation and `ceil_mode` of a 2-d pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dOptions {
    /// Window size (height, width).
    pub kernel: [usize; 2],
    /// Step between windows (PyTorch's default is the kernel size).
    pub stride: [usize; 2],
    /// Implicit padding on each side (at most half the kernel).
    pub padding: [usize; 2],
    /// Spacing of the window taps (max pooling only).
    pub dilation: [usize; 2],
    /// Round the output size up (a last window may start in the padding's range but
    /// not beyond the input).
    pub ceil_mode: bool,
}

impl Pool2dOptions {
    /// A `k x k` window with stride `k`, no padding.
    pub fn new(k: usize) -> Self {
        Pool2dOptions { kernel: [k, k], stride: [k, k], padding: [0, 0], dilation: [1, 1], ceil_mode: false }
    }

    /// Sets the stride.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }

    /// Sets the padding.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }

    /// Sets `ceil_mode`.
    pub fn ceil_mode(mut self, on: bool) -> Self {
        self.ceil_mode = on;
        self
    }
}

fn dims4(op: &str, x: &Var) -> Result<[usize; 4]> {
    match *x.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(Error::shape(op, format!("input must be 4-D [N, C, H, W], got shape {:?}", x.shape()))),
    }
}

/// PyTorch's pooling output size (`pooling_output_shape`).
fn out_size(op: &str, len: usize, o: &Pool2dOptions, d: usize) -> Result<usize> {
    let (k, s, p, dil) = (o.kernel[d], o.stride[d], o.padding[d], o.dilation[d]);
    if k == 0 || s == 0 || dil == 0 {
        return Err(Error::argument(
            op,
            format!("kernel {:?}, stride {:?} and dilation must be positive", o.kernel, o.stride),
        ));
    }
    crate::conv::check_window_params(
        op,
        &[("kernel", o.kernel), ("stride", o.stride), ("padding", o.padding), ("dilation", o.dilation)],
    )?;
    if 2 * p > k {
        return Err(Error::argument(
            op,
            format!("padding {:?} must be at most half the kernel {:?}", o.padding, o.kernel),
        ));
    }
    let span = dil * (k - 1) + 1;
    if len + 2 * p < span {
        return Err(Error::shape(op, format!("input size {len} padded by {p} is smaller than the window {span}")));
    }
    let num = len + 2 * p - span;
    let mut out = if o.ceil_mode { num.div_ceil(s) + 1 } else { num / s + 1 };
    // the last window must start inside the input or the left padding
    if o.ceil_mode && (out - 1) * s >= len + p {
        out -= 1;
    }
    Ok(out)
}

/// The windows of every output position: `[N, C, OH, OW, kh * kw]`.
fn windows(x: &Var, o: &Pool2dOptions, oh: usize, ow: usize, fill: f64) -> Result<Var> {
    let [n, c, _, _] = dims4("pool", x)?;
    x.reindex(&[n, c, oh, ow, o.kernel[0] * o.kernel[1]], window_exprs(o), fill, vec![])
}

/// Windows of at most this many taps are folded element-wise over per-tap views
/// (strided loads that run on vectors) rather than reduced over a tap axis.
const FOLD_TAPS: usize = 16;

/// The taps of every window as `kh * kw` views `[N, C, OH, OW]` of the input, in
/// row-major tap order, `fill` outside it.
fn window_taps(x: &Var, o: &Pool2dOptions, oh: usize, ow: usize, fill: f64) -> Result<Vec<Var>> {
    let [n, c, _, _] = dims4("pool", x)?;
    let ax = |pos: usize, tap: usize, d: usize| {
        E::idx(pos) * o.stride[d] as i64 - o.padding[d] as i64 + (tap * o.dilation[d]) as i64
    };
    let mut taps = Vec::with_capacity(o.kernel[0] * o.kernel[1]);
    for ki in 0..o.kernel[0] {
        for kj in 0..o.kernel[1] {
            // positions in the padding or past the end (ceil mode) read `fill`
            let exprs = vec![E::idx(0), E::idx(1), ax(2, ki, 0), ax(3, kj, 1)];
            taps.push(x.reindex(&[n, c, oh, ow], exprs, fill, vec![])?);
        }
    }
    Ok(taps)
}

/// Input index per input dim for window position `(i0, i1, i2, i3, tap i4)`.
fn window_exprs(o: &Pool2dOptions) -> Vec<E> {
    let kw = o.kernel[1] as i64;
    let ax = |pos: usize, tap: E, d: usize| {
        E::idx(pos) * o.stride[d] as i64 - o.padding[d] as i64 + tap * o.dilation[d] as i64
    };
    vec![E::idx(0), E::idx(1), ax(2, E::idx(4).floor_div(kw), 0), ax(3, E::idx(4).modulo(kw), 1)]
}

/// `torch.nn.functional.max_pool2d`. The gradient goes to the first maximum of each
/// window in row-major order, as PyTorch's does (ties are common after a ReLU).
pub fn max_pool2d(x: &Var, o: &Pool2dOptions) -> Result<Var> {
    let op = "max_pool2d";
    let [_, _, h, w] = dims4(op, x)?;
    if !x.dtype().is_float() {
        return Err(Error::dtype(op, format!("needs a floating-point input, got {}", x.dtype())));
    }
    let (oh, ow) = (out_size(op, h, o, 0)?, out_size(op, w, o, 1)?);
    let o = *o;
    let forward = move |xs: &[Var]| -> Result<(Var, Vec<Var>)> {
        let y = if o.kernel[0] * o.kernel[1] <= FOLD_TAPS {
            // stored: a consumer that reindexes it (the next convolution's padding)
            // would compose guards with the taps' and lose the vector loop
            let taps = window_taps(&xs[0], &o, oh, ow, f64::NEG_INFINITY)?;
            taps[1..].iter().try_fold(taps[0].clone(), |m, t| m.maximum(t))?.materialize()
        } else {
            windows(&xs[0], &o, oh, ow, f64::NEG_INFINITY)?.reduce(ReduceOp::Max, &[4], false)?
        };
        Ok((y.clone(), vec![xs[0].clone(), y]))
    };
    let backward = move |saved: &[Var], g: &Var| -> Result<Vec<Option<Var>>> {
        let (x, y) = (&saved[0], &saved[1]);
        let kk = o.kernel[0] * o.kernel[1];
        // the first tap (row-major) that holds the maximum; NaN wins, as in the
        // forward max. Tap numbers are small integers, exact in f32 (which keeps
        // consumers on f32 vectors).
        let first = if kk <= FOLD_TAPS {
            let mut first: Option<Var> = None;
            for (t, xt) in window_taps(x, &o, oh, ow, f64::NEG_INFINITY)?.iter().enumerate().rev() {
                let hit = xt.eq(y)?.logical_or(&xt.ne(xt)?)?;
                first = Some(match first {
                    None => Var::where_(&hit, t as f64, kk as f64)?,
                    Some(later) => Var::where_(&hit, t as f64, &later)?,
                });
            }
            // stored: the gradient gathers it once per input pixel
            first.ok_or_else(|| Error::argument(op, "empty window"))?.materialize()
        } else {
            let win = windows(x, &o, oh, ow, f64::NEG_INFINITY)?;
            let yb = y.reshape(&[y.shape()[0] as isize, y.shape()[1] as isize, oh as isize, ow as isize, 1])?;
            let hit = win.eq(&yb)?.logical_or(&win.ne(&win)?)?;
            let tap = Var::index(win.shape(), 4, DType::F32)?;
            Var::where_(&hit, &tap, kk as f64)?.reduce(ReduceOp::Min, &[4], true)?
        };
        let first = first.reshape(&[y.shape()[0] as isize, y.shape()[1] as isize, oh as isize, ow as isize])?;
        let [n, c, h, w] = dims4("max_pool2d", x)?;
        let [kh, kw] = o.kernel;
        if o.kernel == o.stride && o.padding == [0, 0] && o.dilation == [1, 1] {
            // non-overlapping windows (VGG's 2x2 pools): each input pixel lies in at
            // most one window, at tap (h mod kh, w mod kw): an element-wise gather.
            // Tap numbers are small integers, exact in f32, which keeps the kernel
            // on f32 vectors; the [H, W] tap pattern is stored once.
            let dom = [n, c, h, w];
            let exprs = vec![E::idx(0), E::idx(1), E::idx(2).floor_div(kh as i64), E::idx(3).floor_div(kw as i64)];
            let first_at = first.reindex(&dom, exprs.clone(), -1.0, vec![])?;
            let g_at = g.reindex(&dom, exprs, 0.0, vec![])?;
            let row = Var::index(&[h, w], 0, DType::I64)?.remainder(kh as i64)?;
            let col = Var::index(&[h, w], 1, DType::I64)?.remainder(kw as i64)?;
            let pattern = row.try_mul(kw as i64)?.try_add(&col)?.cast(DType::F32).materialize();
            return Ok(vec![Some(Var::where_(&first_at.eq(&pattern)?, &g_at, 0.0)?.cast(x.dtype()))]);
        }
        // gather form (no scatter): over [N, C, H, W, kh, kw], the window whose tap
        // (ki, kj) reads (h, w) passes its gradient when that tap was its first max
        let inv =
            |pos: usize, tap: usize, d: usize| E::idx(pos) + o.padding[d] as i64 - E::idx(tap) * o.dilation[d] as i64;
        let exprs = vec![
            E::idx(0),
            E::idx(1),
            inv(2, 4, 0).floor_div(o.stride[0] as i64),
            inv(3, 5, 1).floor_div(o.stride[1] as i64),
        ];
        let conds =
            vec![inv(2, 4, 0).modulo(o.stride[0] as i64).eq_(0), inv(3, 5, 1).modulo(o.stride[1] as i64).eq_(0)];
        let dom = [n, c, h, w, kh, kw];
        let first_at = first.reindex(&dom, exprs.clone(), -1.0, conds.clone())?;
        let g_at = g.reindex(&dom, exprs, 0.0, conds)?;
        let tap = Var::index(&dom, 4, DType::F32)?.try_mul(kw as f64)?.try_add(&Var::index(&dom, 5, DType::F32)?)?;
        let picked = Var::where_(&first_at.eq(&tap)?, &g_at, 0.0)?.cast(x.dtype());
        Ok(vec![Some(picked.reduce(ReduceOp::Sum, &[4, 5], false)?)])
    };
    jit_core::custom_op(op, std::slice::from_ref(x), forward, Arc::new(backward))
}

/// `torch.nn.functional.avg_pool2d` (no dilation). `count_include_pad` counts the
/// padding in the divisor (PyTorch's default `true`); `divisor_override` replaces it.
pub fn avg_pool2d(x: &Var, o: &Pool2dOptions, count_include_pad: bool, divisor_override: Option<usize>) -> Result<Var> {
    let op = "avg_pool2d";
    let [_, _, h, w] = dims4(op, x)?;
    if !x.dtype().is_float() {
        return Err(Error::dtype(op, format!("needs a floating-point input, got {}", x.dtype())));
    }
    if o.dilation != [1, 1] {
        return Err(Error::argument(op, "average pooling has no dilation"));
    }
    if divisor_override == Some(0) {
        return Err(Error::argument(op, "divisor_override must be positive"));
    }
    let (oh, ow) = (out_size(op, h, o, 0)?, out_size(op, w, o, 1)?);
    let sums = if o.kernel[0] * o.kernel[1] <= FOLD_TAPS {
        let taps = window_taps(x, o, oh, ow, 0.0)?;
        taps[1..].iter().try_fold(taps[0].clone(), |s, t| s.try_add(t))?
    } else {
        windows(x, o, oh, ow, 0.0)?.reduce(ReduceOp::Sum, &[4], false)?
    };
    // PyTorch's divisor: the window clipped to the padded input, or to the input
    let count = |pos: usize, d: usize, len: usize| -> (usize, usize) {
        let start = (pos * o.stride[d]) as i64 - o.padding[d] as i64;
        let end = (start + o.kernel[d] as i64).min((len + o.padding[d]) as i64);
        let padded = (end - start) as usize;
        let inside = (end.min(len as i64) - start.max(0)).max(0) as usize;
        (padded, inside)
    };
    let mut div = Vec::with_capacity(oh * ow);
    for i in 0..oh {
        for j in 0..ow {
            let ((ph, ih), (pw, iw)) = (count(i, 0, h), count(j, 1, w));
            let d = divisor_override.unwrap_or(if count_include_pad { ph * pw } else { ih * iw });
            div.push(d as f64);
        }
    }
    let div = Var::from_vec(div, &[oh, ow])?.cast(x.dtype());
    sums.try_div(&div)
}

/// `torch.nn.functional.adaptive_avg_pool2d`: output `[N, C, oh, ow]`; window `i`
/// covers `floor(i * H / oh) .. ceil((i + 1) * H / oh)`.
pub fn adaptive_avg_pool2d(x: &Var, size: [usize; 2]) -> Result<Var> {
    let op = "adaptive_avg_pool2d";
    let [n, c, h, w] = dims4(op, x)?;
    let [oh, ow] = size;
    if oh == 0 || ow == 0 {
        return Err(Error::argument(op, format!("output size {size:?} must be positive")));
    }
    let bounds = |i: usize, len: usize, out: usize| (i * len / out, ((i + 1) * len).div_ceil(out));
    let max_k = |len: usize, out: usize| (0..out).map(|i| bounds(i, len, out)).map(|(s, e)| e - s).max().unwrap_or(1);
    let (kh, kw) = (max_k(h, oh), max_k(w, ow));
    let start = |pos: usize, len: usize, out: usize| (E::idx(pos) * len as i64).floor_div(out as i64);
    let end =
        |pos: usize, len: usize, out: usize| ((E::idx(pos) + 1) * len as i64 + (out as i64 - 1)).floor_div(out as i64);
    let exprs = vec![E::idx(0), E::idx(1), start(2, h, oh) + E::idx(4), start(3, w, ow) + E::idx(5)];
    let conds = vec![(start(2, h, oh) + E::idx(4)).lt(end(2, h, oh)), (start(3, w, ow) + E::idx(5)).lt(end(3, w, ow))];
    let sums = x.reindex(&[n, c, oh, ow, kh, kw], exprs, 0.0, conds)?.reduce(ReduceOp::Sum, &[4, 5], false)?;
    let mut div = Vec::with_capacity(oh * ow);
    for i in 0..oh {
        for j in 0..ow {
            let ((hs, he), (ws, we)) = (bounds(i, h, oh), bounds(j, w, ow));
            div.push(((he - hs) * (we - ws)) as f64);
        }
    }
    sums.try_div(Var::from_vec(div, &[oh, ow])?.cast(x.dtype()))
}

/// Global average pooling: the mean over height and width, keeping them as size 1.
pub fn global_avg_pool2d(x: &Var) -> Result<Var> {
    dims4("global_avg_pool2d", x)?;
    x.mean(&[2, 3], true)
}
