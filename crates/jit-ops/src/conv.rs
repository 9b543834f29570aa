//! Convolutions (NCHW), PyTorch's `conv2d` and `conv_transpose2d`.
//!
//! `conv2d` is im2col written as one `reindex` (padding, stride, dilation, groups and
//! reflect padding are index arithmetic in that kernel, so a reflect-padded input is
//! never materialised separately) feeding one batched gemm call; a 1x1 convolution
//! with unit stride skips the im2col. `conv_transpose2d` is the adjoint: a gemm
//! followed by a scatter-add (`reindex_reduce`). Gradients come from the parts'
//! rules: the gradient of the im2col reindex is the col2im scatter-add, the gemm
//! has its own.

use crate::shape::{PadMode, ShapeOps};
use jit_core::{Conv2dSpec, ConvPass, DType, Error, ExternOp, IndexExpr as E, ReduceOp, Result, Var, DIRECT_MAX_PAIRS};
use std::sync::Arc;

/// How `conv2d` pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvPadding {
    /// Zeros outside the input (PyTorch's default).
    #[default]
    Zeros,
    /// Mirror without repeating the edge (`padding_mode="reflect"`); the padding must
    /// be smaller than the input.
    Reflect,
}

/// The arguments of [`conv2d`] besides input, weight and bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Step between windows (height, width).
    pub stride: [usize; 2],
    /// Padding on each side (height, width).
    pub padding: [usize; 2],
    /// Spacing of the kernel taps (height, width).
    pub dilation: [usize; 2],
    /// Channel groups: input and output channels split into this many independent
    /// convolutions.
    pub groups: usize,
    /// Zeros or reflection.
    pub padding_mode: ConvPadding,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1, padding_mode: ConvPadding::Zeros }
    }
}

impl Conv2dOptions {
    /// Same stride and padding in both directions.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dOptions { stride: [stride; 2], padding: [padding; 2], ..Default::default() }
    }
}

/// The arguments of [`conv_transpose2d`] besides input, weight and bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTranspose2dOptions {
    /// Stride of the convolution this one is the adjoint of.
    pub stride: [usize; 2],
    /// Its padding (removed from the output).
    pub padding: [usize; 2],
    /// Extra rows/columns added on one side of the output (smaller than the stride or
    /// the dilation).
    pub output_padding: [usize; 2],
    /// Spacing of the kernel taps.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

impl Default for ConvTranspose2dOptions {
    fn default() -> Self {
        ConvTranspose2dOptions { stride: [1, 1], padding: [0, 0], output_padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

fn dims4(op: &str, what: &str, x: &Var) -> Result<[usize; 4]> {
    match *x.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(Error::shape(op, format!("{what} must be 4-D, got shape {:?}", x.shape()))),
    }
}

/// The largest stride, padding, dilation or kernel size the convolution and pooling
/// operators accept: nothing real comes near it, and below it their size arithmetic
/// cannot overflow (a value from a damaged model file is refused, not wrapped).
pub(crate) const MAX_WINDOW_PARAM: usize = i32::MAX as usize;

/// Refuses options above [`MAX_WINDOW_PARAM`], naming the option.
pub(crate) fn check_window_params(op: &str, params: &[(&str, [usize; 2])]) -> Result<()> {
    for (name, v) in params {
        if v.iter().any(|&p| p > MAX_WINDOW_PARAM) {
            return Err(Error::argument(op, format!("{name} {v:?} is too large (at most {MAX_WINDOW_PARAM})")));
        }
    }
    Ok(())
}

fn check_bias(op: &str, b: Option<&Var>, channels: usize) -> Result<()> {
    if let Some(b) = b {
        if b.shape() != [channels] {
            return Err(Error::shape(op, format!("bias must have shape [{channels}], got {:?}", b.shape())));
        }
    }
    Ok(())
}

fn add_bias(y: Var, b: Option<&Var>) -> Result<Var> {
    match b {
        Some(b) => y.try_add(&b.reshape(&[1, -1, 1, 1])?),
        None => Ok(y),
    }
}

/// The geometry of one im2col.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Im2col {
    pub(crate) groups: usize,
    pub(crate) kernel: [usize; 2],
    pub(crate) stride: [usize; 2],
    pub(crate) padding: [usize; 2],
    pub(crate) dilation: [usize; 2],
    pub(crate) out: [usize; 2],
}

/// `[N, C, H, W]` -> `[N, G, C/G, kh, kw, OH, OW]`: every window's taps, zeros outside.
/// Its gradient (col2im) is written as a gather: each input pixel sums the taps that
/// read it, found by inverting the window arithmetic, so it is a parallel reduction
/// rather than a scatter.
pub(crate) fn im2col(x: &Var, s: Im2col) -> Result<Var> {
    let [n, c, h, w] = dims4("conv2d", "input", x)?;
    let cg = c / s.groups;
    let [kh, kw] = s.kernel;
    let [oh, ow] = s.out;
    let fwd_axis = |pos: usize, tap: usize, d: usize| {
        E::idx(pos) * s.stride[d] as i64 + E::idx(tap) * s.dilation[d] as i64 - s.padding[d] as i64
    };
    let forward = move |xs: &[Var]| -> Result<(Var, Vec<Var>)> {
        // Every pixel is read kh x kw times: store the (zero-padded) input once, so
        // that its producer (bias, ReLU) is not recomputed per tap and every read
        // of the im2col kernel is in range (no guards: contiguous vector loads).
        let src = zero_pad(&xs[0], s.padding)?.materialize();
        let unpadded = |pos: usize, tap: usize, d: usize| fwd_axis(pos, tap, d) + s.padding[d] as i64;
        let exprs = vec![E::idx(0), E::idx(1) * cg as i64 + E::idx(2), unpadded(5, 3, 0), unpadded(6, 4, 1)];
        Ok((src.reindex(&[n, s.groups, cg, kh, kw, oh, ow], exprs, 0.0, vec![])?, vec![]))
    };
    let backward =
        move |_: &[Var], g: &Var| -> Result<Vec<Option<Var>>> { Ok(vec![Some(col2im(g, s, [n, c, h, w])?)]) };
    jit_core::custom_op("im2col", std::slice::from_ref(x), forward, Arc::new(backward))
}

/// The adjoint of [`im2col`]: `[N, G, C/G, kh, kw, OH, OW]` -> `[N, C, H, W]`, each
/// pixel the sum of the taps that read it.
pub(crate) fn col2im(g: &Var, s: Im2col, [n, c, h, w]: [usize; 4]) -> Result<Var> {
    if s.stride == [1, 1] {
        return col2im_unit_stride(g, s, [n, c, h, w]);
    }
    let cg = c / s.groups;
    let [kh, kw] = s.kernel;
    // over [N, C, H, W, kh, kw]: the output position whose tap (ki, kj) read (h, w)
    let inv = |pos: usize, tap: usize, d: usize| E::idx(pos) + s.padding[d] as i64 - E::idx(tap) * s.dilation[d] as i64;
    let exprs = vec![
        E::idx(0),
        E::idx(1).floor_div(cg as i64),
        E::idx(1).modulo(cg as i64),
        E::idx(4),
        E::idx(5),
        inv(2, 4, 0).floor_div(s.stride[0] as i64),
        inv(3, 5, 1).floor_div(s.stride[1] as i64),
    ];
    let mut conds = vec![];
    for (d, (pos, tap)) in [(2, 4), (3, 5)].into_iter().enumerate() {
        if s.stride[d] > 1 {
            conds.push(inv(pos, tap, d).modulo(s.stride[d] as i64).eq_(0));
        }
    }
    let taps = g.reindex(&[n, c, h, w, kh, kw], exprs, 0.0, conds)?;
    taps.reduce(ReduceOp::Sum, &[4, 5], false)
}

/// col2im for unit strides: `dx[h, w] = sum over taps of dcols[tap, h + p - ki d,
/// w + p - kj d]`. The gradient columns are zero-padded and stored once, so each of
/// the kh x kw shifted reads is in range and contiguous along `w`: one element-wise
/// kernel that runs on vectors.
fn col2im_unit_stride(g: &Var, s: Im2col, [n, c, h, w]: [usize; 4]) -> Result<Var> {
    let [kh, kw] = s.kernel;
    let [oh, ow] = s.out;
    let cg = c / s.groups;
    let lo = |d: usize, k: usize| ((k - 1) * s.dilation[d]).saturating_sub(s.padding[d]);
    let hi = |d: usize, len: usize, out: usize| (len - 1 + s.padding[d]).saturating_sub(out - 1);
    let (lo_h, lo_w) = (lo(0, kh), lo(1, kw));
    let gp = g.pad(&[lo_w, hi(1, w, ow), lo_h, hi(0, h, oh)], PadMode::Constant(0.0))?.materialize();
    let (group, channel) = if s.groups == 1 {
        (E::c(0), E::idx(1))
    } else {
        (E::idx(1).floor_div(cg as i64), E::idx(1).modulo(cg as i64))
    };
    let mut total: Option<Var> = None;
    for ki in 0..kh {
        for kj in 0..kw {
            let at = |pos: usize, tap: usize, d: usize, low: usize| {
                E::idx(pos) + (s.padding[d] + low) as i64 - (tap * s.dilation[d]) as i64
            };
            let exprs = vec![
                E::idx(0),
                group.clone(),
                channel.clone(),
                E::c(ki as i64),
                E::c(kj as i64),
                at(2, ki, 0, lo_h),
                at(3, kj, 1, lo_w),
            ];
            let term = gp.reindex(&[n, c, h, w], exprs, 0.0, vec![])?;
            total = Some(match total {
                Some(t) => t.try_add(&term)?,
                None => term,
            });
        }
    }
    // stored: consumers (a pooling gradient's windows) would recompute the sum per read
    total.map(|t| t.materialize()).ok_or_else(|| Error::shape("conv2d", "empty kernel"))
}

/// A unit-stride, single-group convolution with its own gradient rule, computed
/// without im2col: the input is zero-padded and stored once, and each of the
/// `kh x kw` taps is one gemm over a shifted view of it, accumulated in place
/// ([`ExternOp::Conv2dShift`]). The backward passes work the same way on the output
/// gradient laid out on the padded grid.
fn conv_unit_stride(x: &Var, w: &Var, s: Im2col) -> Result<Var> {
    let [_, _, h, wd] = dims4("conv2d", "input", x)?;
    let [ph, pw] = s.padding;
    let [oh, ow] = s.out;
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let (kernel, dilation) = (s.kernel, s.dilation);
    let pass = move |p: ConvPass| ExternOp::Conv2dShift { pass: p, kernel, dilation };
    let forward = move |xs: &[Var]| -> Result<(Var, Vec<Var>)> {
        let xp = zero_pad(&xs[0], [ph, pw])?.materialize();
        let y = Var::extern_op(pass(ConvPass::Forward), &[xp, xs[1].clone()])?;
        Ok((y.narrow(2, 0, oh)?.narrow(3, 0, ow)?, vec![xs[0].clone(), xs[1].clone()]))
    };
    let backward = move |saved: &[Var], g: &Var| -> Result<Vec<Option<Var>>> {
        let (x, w) = (&saved[0], &saved[1]);
        // the output gradient on the padded grid, zero outside the valid corner
        let dy = g.pad(&[0, wp - ow, 0, hp - oh], PadMode::Constant(0.0))?.materialize();
        let dxp = Var::extern_op(pass(ConvPass::BackwardData), &[dy.clone(), w.clone()])?;
        let dx = dxp.narrow(2, ph, h)?.narrow(3, pw, wd)?;
        // the padded input again (computed only when the weight's gradient is), from
        // the input itself: under `create_graph` the weight's gradient then carries
        // the input's second derivatives
        let xp = zero_pad(x, [ph, pw])?.materialize();
        let dw = Var::extern_op(pass(ConvPass::BackwardFilter), &[dy, xp])?;
        Ok(vec![Some(dx), Some(dw)])
    };
    jit_core::custom_op("conv2d", &[x.clone(), w.clone()], forward, Arc::new(backward))
}

/// `x` zero-padded by `[ph, pw]` on both sides (itself when there is no padding).
fn zero_pad(x: &Var, [ph, pw]: [usize; 2]) -> Result<Var> {
    if ph + pw > 0 {
        x.pad(&[pw, pw, ph, ph], PadMode::Constant(0.0))
    } else {
        Ok(x.clone())
    }
}

/// The space-to-depth split of `v` (`[lead, c, ..]`): phase `(a, b)` of channel `ci`
/// at `(u, v)` is `v[.., ci, u sh + a, v sw + b]`, zero past the end, stacked as
/// channel `ci sh sw + a sw + b` of `[lead, c sh sw, rows, cols]`.
fn phase_split(v: &Var, [lead, c, rows, cols]: [usize; 4], [sh, sw]: [usize; 2]) -> Result<Var> {
    let exprs = vec![E::idx(0), E::idx(1), E::idx(4) * sh as i64 + E::idx(2), E::idx(5) * sw as i64 + E::idx(3)];
    v.reindex(&[lead, c, sh, sw, rows, cols], exprs, 0.0, vec![])?.reshape(&[
        lead as isize,
        (c * sh * sw) as isize,
        rows as isize,
        cols as isize,
    ])
}

/// A strided convolution (one group, no dilation) as a unit-stride one: the zero-
/// padded input is split into `sh x sw` phases stacked as channels (space-to-depth,
/// `[N, C sh sw, ceil(Hp / sh), ceil(Wp / sw)]`), and the weight is zero-padded to
/// multiples of the stride and split the same way (`[O, C sh sw, ceil(kh / sh),
/// ceil(kw / sw)]`), so that tap `(ki, kj)` of phase `(ki mod sh, kj mod sw)` reads
/// the same input as before. The zero taps cost `ceil(k / s)^2 s^2 / k^2` times the
/// work (16/9 for a 3x3 kernel with stride 2), and the product runs as shifted gemms
/// instead of over a materialised im2col. Gradients flow through the reindexes.
fn conv_space_to_depth(x: &Var, w: &Var, s: Im2col) -> Result<Var> {
    let [n, c, h, wd] = dims4("conv2d", "input", x)?;
    let [oc, _, kh, kw] = dims4("conv2d", "weight", w)?;
    let [sh, sw] = s.stride;
    let [ph, pw] = s.padding;
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let (hq, wq) = (hp.div_ceil(sh), wp.div_ceil(sw));
    let (qh, qw) = (kh.div_ceil(sh), kw.div_ceil(sw));
    // stored first: the phase split then reads it with plain strides, where a
    // producer's reflection would be re-derived per lane of every phase
    let xp = zero_pad(x, s.padding)?.materialize();
    // the input's phases, and the weight's taps split the same way
    let phases = phase_split(&xp, [n, c, hq, wq], s.stride)?;
    let wq_ = phase_split(w, [oc, c, qh, qw], s.stride)?;
    let spec = Im2col {
        groups: 1,
        kernel: [qh, qw],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        out: [hq - qh + 1, wq - qw + 1],
    };
    let [oh, ow] = s.out;
    conv_unit_stride(&phases, &wq_, spec)?.narrow(2, 0, oh)?.narrow(3, 0, ow)
}

/// A stride-2 convolution (one group, no dilation) with its own gradient rule: the
/// forward product reads the zero-padded input directly
/// ([`ExternOp::Conv2dStride2`], no space-to-depth copy of it); the gradients are the
/// ones of the space-to-depth form ([`conv_space_to_depth`]): the unit-stride
/// backward passes on the input's and the weight's phases, whose gradients are
/// gathered back to the input's and the weight's layouts (the phase split is a
/// bijection onto the padded grid, so its gradient needs no sums).
fn conv_stride2(x: &Var, w: &Var, s: Im2col) -> Result<Var> {
    let [n, c, h, wd] = dims4("conv2d", "input", x)?;
    let [oc, _, kh, kw] = dims4("conv2d", "weight", w)?;
    let [ph, pw] = s.padding;
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let kernel = [kh, kw];
    let forward = move |xs: &[Var]| -> Result<(Var, Vec<Var>)> {
        let xp = zero_pad(&xs[0], [ph, pw])?.materialize();
        let y = Var::extern_op(ExternOp::Conv2dStride2 { kernel }, &[xp, xs[1].clone()])?;
        Ok((y, vec![xs[0].clone(), xs[1].clone()]))
    };
    let backward = move |saved: &[Var], g: &Var| -> Result<Vec<Option<Var>>> {
        // the phases are read from the input itself (the padding fuses into the
        // phase split), so that under `create_graph` they carry its gradient
        let (xp, w) = (&zero_pad(&saved[0], [ph, pw])?, &saved[1]);
        let (hq, wq) = (hp.div_ceil(2), wp.div_ceil(2));
        let (qh, qw) = (kh.div_ceil(2), kw.div_ceil(2));
        // and back: element (ci, r, q) of v's layout is phase (r % 2, q % 2) at (r / 2, q / 2)
        let unsplit = |d: &Var, lead: usize, rows: usize, cols: usize| -> Result<Var> {
            let ch = E::idx(1) * 4 + E::idx(2).modulo(2) * 2 + E::idx(3).modulo(2);
            let exprs = vec![E::idx(0), ch, E::idx(2).floor_div(2), E::idx(3).floor_div(2)];
            d.reindex(&[lead, c, rows, cols], exprs, 0.0, vec![])
        };
        let phases = phase_split(xp, [n, c, hq, wq], [2, 2])?.materialize();
        let wph = phase_split(w, [oc, c, qh, qw], [2, 2])?.materialize();
        let [oh, ow] = s.out;
        // the output gradient on the phases' grid, zero outside the valid corner
        let dy = g.pad(&[0, wq - ow, 0, hq - oh], PadMode::Constant(0.0))?.materialize();
        let pass = |p: ConvPass| ExternOp::Conv2dShift { pass: p, kernel: [qh, qw], dilation: [1, 1] };
        let dphases = Var::extern_op(pass(ConvPass::BackwardData), &[dy.clone(), wph])?;
        let dwph = Var::extern_op(pass(ConvPass::BackwardFilter), &[dy, phases])?;
        let dx = unsplit(&dphases, n, hp, wp)?.narrow(2, ph, h)?.narrow(3, pw, wd)?;
        let dw = unsplit(&dwph, oc, kh, kw)?;
        Ok(vec![Some(dx), Some(dw)])
    };
    jit_core::custom_op("conv2d", &[x.clone(), w.clone()], forward, Arc::new(backward))
}

/// `JIT_CONV_STRIDE2=0` turns the direct stride-2 forward off (the space-to-depth
/// form then runs both ways), to compare the two.
fn stride2_direct_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("JIT_CONV_STRIDE2").map_or(true, |v| v != "0"))
}

/// Whether `conv2d` builds every convolution as im2col + one matrix product: on the
/// CUDA backend (where the shifted-gemm, direct and stride-2 products would run on
/// the host, with a copy each way), or everywhere with `JIT_CONV_IM2COL=1` (to
/// compare the paths on the CPU). Read when the graph is built.
fn im2col_only() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    jit_core::flags().backend == jit_core::Backend::Cuda
        || *FORCED.get_or_init(|| std::env::var("JIT_CONV_IM2COL").is_ok_and(|v| v.trim() == "1"))
}

/// Whether `conv2d` hands convolutions to cuDNN: on the CUDA backend when cuDNN is
/// usable (and not turned off with `JIT_CUDNN=0`). Read when the graph is built.
fn cudnn_convolutions() -> bool {
    jit_core::flags().backend == jit_core::Backend::Cuda && jit_core::cudnn_usable()
}

/// `torch.nn.functional.conv2d` (with `padding_mode` of `nn.Conv2d`): `x` is
/// `[N, C, H, W]`, `w` is `[O, C / groups, kh, kw]`, `b` is `[O]`.
///
/// On the CUDA backend with cuDNN this is [`conv2d_library`]; otherwise (the CPU
/// backend, or CUDA without cuDNN) a generated im2col kernel feeding matrix
/// products, or on the CPU the direct, shifted-gemm and stride-2 products.
pub fn conv2d(x: &Var, w: &Var, b: Option<&Var>, o: &Conv2dOptions) -> Result<Var> {
    conv2d_with(x, w, b, o, cudnn_convolutions())
}

/// `conv2d` as one library call per pass ([`ExternOp::Conv2d`]: forward,
/// backward-data and backward-filter, each differentiable again, so gradients of
/// gradients work): what [`conv2d`] builds on the CUDA backend when cuDNN is
/// usable. Off the device (the CPU and reference backends) each pass runs as a
/// plain loop that sums in f64: correct, not fast; it is there so that this path
/// can be checked, and run, anywhere. Reflect padding is materialised first.
pub fn conv2d_library(x: &Var, w: &Var, b: Option<&Var>, o: &Conv2dOptions) -> Result<Var> {
    conv2d_with(x, w, b, o, true)
}

/// The forward pass as one library call; reflect padding is materialised first
/// (a library cannot index it), zero padding is the library's own.
fn library_conv(x: &Var, w: &Var, o: &Conv2dOptions) -> Result<Var> {
    let [_, _, h, wd] = dims4("conv2d", "input", x)?;
    let [_, _, kh, kw] = dims4("conv2d", "weight", w)?;
    let [ph, pw] = o.padding;
    let (src, input, padding) = match o.padding_mode {
        ConvPadding::Zeros => (x.clone(), [h, wd], o.padding),
        ConvPadding::Reflect => (x.pad(&[pw, pw, ph, ph], PadMode::Reflect)?, [h + 2 * ph, wd + 2 * pw], [0, 0]),
    };
    let spec =
        Conv2dSpec { input, kernel: [kh, kw], stride: o.stride, padding, dilation: o.dilation, groups: o.groups };
    Var::extern_op(ExternOp::Conv2d { pass: ConvPass::Forward, spec }, &[src, w.clone()])
}

fn conv2d_with(x: &Var, w: &Var, b: Option<&Var>, o: &Conv2dOptions, library: bool) -> Result<Var> {
    if let Some(v) = crate::autocast::lowered(&[x, w]) {
        return conv2d_with(&v[0], &v[1], b.map(crate::autocast::lower).as_ref(), o, library);
    }
    let op = "conv2d";
    let [n, c, h, wd] = dims4(op, "input", x)?;
    let [oc, cg, kh, kw] = dims4(op, "weight", w)?;
    let g = o.groups;
    if g == 0 || c % g != 0 || oc % g != 0 {
        return Err(Error::shape(
            op,
            format!("groups={g} must divide the input channels ({c}) and the output channels ({oc})"),
        ));
    }
    if cg * g != c {
        return Err(Error::shape(
            op,
            format!(
                "weight {:?} expects {} input channels (x{g} groups) but the input {:?} has {c}",
                w.shape(),
                cg * g,
                x.shape()
            ),
        ));
    }
    if o.stride.contains(&0) || o.dilation.contains(&0) {
        return Err(Error::argument(
            op,
            format!("stride {:?} and dilation {:?} must be positive", o.stride, o.dilation),
        ));
    }
    check_window_params(op, &[("stride", o.stride), ("padding", o.padding), ("dilation", o.dilation)])?;
    if kh == 0 || kw == 0 {
        return Err(Error::shape(op, format!("the weight {:?} has an empty kernel", w.shape())));
    }
    check_bias(op, b, oc)?;
    let out_size = |len: usize, k: usize, s: usize, p: usize, d: usize| -> Result<usize> {
        let span = d.checked_mul(k - 1).map_or(usize::MAX, |v| v.saturating_add(1));
        if len.saturating_add(2 * p) < span {
            return Err(Error::shape(
                op,
                format!(
                    "the input {:?} padded by {:?} is smaller than the dilated kernel {:?}",
                    x.shape(),
                    o.padding,
                    [
                        o.dilation[0].saturating_mul(kh - 1).saturating_add(1),
                        o.dilation[1].saturating_mul(kw - 1).saturating_add(1)
                    ]
                ),
            ));
        }
        Ok((len.saturating_add(2 * p) - span) / s + 1)
    };
    let oh = out_size(h, kh, o.stride[0], o.padding[0], o.dilation[0])?;
    let ow = out_size(wd, kw, o.stride[1], o.padding[1], o.dilation[1])?;
    if o.padding_mode == ConvPadding::Reflect && (o.padding[0] >= h || o.padding[1] >= wd) {
        return Err(Error::shape(
            op,
            format!("reflect padding {:?} must be smaller than the input's height and width ({h}, {wd})", o.padding),
        ));
    }
    if library {
        return add_bias(library_conv(x, w, o)?, b);
    }
    let k = cg * kh * kw;
    let pointwise = kh == 1 && kw == 1 && o.stride == [1, 1] && o.padding == [0, 0];
    let cols = if pointwise {
        x.reshape(&[(n * g) as isize, k as isize, (h * wd) as isize])?
    } else {
        // reflect padding is a reindex that the im2col kernel inlines
        let (src, padding) = match o.padding_mode {
            ConvPadding::Zeros => (x.clone(), o.padding),
            ConvPadding::Reflect => {
                let [ph, pw] = o.padding;
                (x.pad(&[pw, pw, ph, ph], PadMode::Reflect)?, [0, 0])
            }
        };
        let spec =
            Im2col { groups: g, kernel: [kh, kw], stride: o.stride, padding, dilation: o.dilation, out: [oh, ow] };
        // the products below have no device implementation yet (on the GPU a
        // convolution is an im2col kernel feeding one cuBLAS product) and compute in
        // f32 (an f64 convolution is im2col + an f64 gemm, exact to f64)
        let host_products = !im2col_only() && x.dtype() != DType::F64;
        // unit stride, one group: shifted gemms (16 or more channels) or a direct
        // convolution (fewer), on the stored padded input, no im2col
        if host_products && g == 1 && o.stride == [1, 1] {
            return add_bias(conv_unit_stride(&src, w, spec)?, b);
        }
        // strided, one group, enough channels: space-to-depth turns it into a
        // unit-stride convolution with stride^2 times the channels
        let [sh, sw] = o.stride;
        if host_products && g == 1 && o.dilation == [1, 1] && kh >= sh && kw >= sw && cg * sh * sw >= 16 {
            // stride 2 with few enough (channel, tap) pairs: the direct product on the
            // padded input, without the phase split's copy
            if o.stride == [2, 2] && c * kh * kw <= DIRECT_MAX_PAIRS && stride2_direct_enabled() {
                return add_bias(conv_stride2(&src, w, spec)?, b);
            }
            return add_bias(conv_space_to_depth(&src, w, spec)?, b);
        }
        im2col(&src, spec)?.reshape(&[(n * g) as isize, k as isize, (oh * ow) as isize])?
    };
    let wm = if g == 1 {
        w.reshape(&[1, oc as isize, k as isize])?
    } else {
        w.reshape(&[1, g as isize, (oc / g) as isize, k as isize])?
            .expand(&[n as isize, g as isize, (oc / g) as isize, k as isize])?
            .reshape(&[(n * g) as isize, (oc / g) as isize, k as isize])?
    };
    let y = Var::extern_op(ExternOp::Matmul { trans_a: false, trans_b: false }, &[wm, cols])?;
    add_bias(y.reshape(&[n as isize, oc as isize, oh as isize, ow as isize])?, b)
}

/// `torch.nn.functional.conv_transpose2d`: `x` is `[N, Cin, H, W]`, `w` is
/// `[Cin, Cout / groups, kh, kw]`, `b` is `[Cout]`.
///
/// On the CUDA backend with cuDNN (and `output_padding` smaller than the stride)
/// this is [`conv_transpose2d_library`]; otherwise a matrix product followed by a
/// scatter-add.
pub fn conv_transpose2d(x: &Var, w: &Var, b: Option<&Var>, o: &ConvTranspose2dOptions) -> Result<Var> {
    conv_transpose2d_with(x, w, b, o, cudnn_convolutions())
}

/// `conv_transpose2d` as the data gradient of the convolution it is the adjoint
/// of: one library call ([`ExternOp::Conv2d`]'s backward-data pass, cuDNN on the
/// CUDA backend, host loops elsewhere), differentiable like [`conv2d_library`].
/// Needs `output_padding` smaller than the stride (else the matrix-product path).
pub fn conv_transpose2d_library(x: &Var, w: &Var, b: Option<&Var>, o: &ConvTranspose2dOptions) -> Result<Var> {
    conv_transpose2d_with(x, w, b, o, true)
}

fn conv_transpose2d_with(x: &Var, w: &Var, b: Option<&Var>, o: &ConvTranspose2dOptions, library: bool) -> Result<Var> {
    if let Some(v) = crate::autocast::lowered(&[x, w]) {
        return conv_transpose2d_with(&v[0], &v[1], b.map(crate::autocast::lower).as_ref(), o, library);
    }
    let op = "conv_transpose2d";
    let [n, cin, h, wd] = dims4(op, "input", x)?;
    let [wcin, cog, kh, kw] = dims4(op, "weight", w)?;
    let g = o.groups;
    if g == 0 || cin % g != 0 || wcin != cin {
        return Err(Error::shape(
            op,
            format!("weight {:?} needs {cin} input channels divisible by groups={g}, input {:?}", w.shape(), x.shape()),
        ));
    }
    if o.stride.contains(&0) || o.dilation.contains(&0) {
        return Err(Error::argument(
            op,
            format!("stride {:?} and dilation {:?} must be positive", o.stride, o.dilation),
        ));
    }
    check_window_params(
        op,
        &[("stride", o.stride), ("padding", o.padding), ("dilation", o.dilation), ("output_padding", o.output_padding)],
    )?;
    if kh == 0 || kw == 0 || h == 0 || wd == 0 {
        return Err(Error::shape(
            op,
            format!("the input {:?} and the weight {:?} must not be empty in space", x.shape(), w.shape()),
        ));
    }
    for d in 0..2 {
        if o.output_padding[d] >= o.stride[d].max(o.dilation[d]) {
            return Err(Error::argument(
                op,
                format!("output_padding {:?} must be smaller than the stride or the dilation", o.output_padding),
            ));
        }
    }
    let cout = cog * g;
    check_bias(op, b, cout)?;
    let size = |len: usize, k: usize, d: usize| -> Result<usize> {
        let full = (len - 1)
            .checked_mul(o.stride[d])
            .zip(o.dilation[d].checked_mul(k - 1))
            .and_then(|(a, b)| a.checked_add(b)?.checked_add(o.output_padding[d] + 1))
            .ok_or_else(|| {
                Error::shape(
                    op,
                    format!("the output size of input {:?} with weight {:?} overflows", x.shape(), w.shape()),
                )
            })?;
        full.checked_sub(2 * o.padding[d]).filter(|&s| s > 0).ok_or_else(|| {
            Error::shape(op, format!("padding {:?} leaves no output for input {:?}", o.padding, x.shape()))
        })
    };
    let (oh, ow) = (size(h, kh, 0)?, size(wd, kw, 1)?);
    // the convolution of an [oh, ow] input with these options has an [h, wd] output
    // exactly when the output padding is below the stride
    if library && o.output_padding[0] < o.stride[0] && o.output_padding[1] < o.stride[1] {
        let spec = Conv2dSpec {
            input: [oh, ow],
            kernel: [kh, kw],
            stride: o.stride,
            padding: o.padding,
            dilation: o.dilation,
            groups: g,
        };
        let y = Var::extern_op(ExternOp::Conv2d { pass: ConvPass::BackwardData, spec }, &[x.clone(), w.clone()])?;
        return add_bias(y, b);
    }
    let cig = cin / g;
    let kk = cog * kh * kw;
    let xm = x.reshape(&[(n * g) as isize, cig as isize, (h * wd) as isize])?;
    let wm = if g == 1 {
        w.reshape(&[1, cig as isize, kk as isize])?
    } else {
        w.reshape(&[1, g as isize, cig as isize, kk as isize])?
            .expand(&[n as isize, g as isize, cig as isize, kk as isize])?
            .reshape(&[(n * g) as isize, cig as isize, kk as isize])?
    };
    // [N*G, Cog*kh*kw, H*W] = w_gᵀ x_g, then scattered onto the output
    let cols = Var::extern_op(ExternOp::Matmul { trans_a: true, trans_b: false }, &[wm, xm])?;
    let cols =
        cols.reshape(&[n as isize, g as isize, cog as isize, kh as isize, kw as isize, h as isize, wd as isize])?;
    let axis = |pos: usize, tap: usize, d: usize| {
        E::idx(pos) * o.stride[d] as i64 + E::idx(tap) * o.dilation[d] as i64 - o.padding[d] as i64
    };
    let exprs = vec![E::idx(0), E::idx(1) * cog as i64 + E::idx(2), axis(5, 3, 0), axis(6, 4, 1)];
    let y = cols.reindex_reduce(ReduceOp::Sum, &[n, cout, oh, ow], exprs, vec![])?;
    add_bias(y, b)
}
