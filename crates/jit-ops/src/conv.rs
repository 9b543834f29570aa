//! Convolutions (NCHW), PyTorch's `conv2d` and `conv_transpose2d`.
//!
//! `conv2d` is im2col written as one `reindex` (padding, stride, dilation, groups and
//! reflect padding are index arithmetic in that kernel, so a reflect-padded input is
//! never materialised separately) feeding one batched gemm call; a 1x1 convolution
//! with unit stride skips the im2col. `conv_transpose2d` is the adjoint: a gemm
//! followed by a scatter-add (`reindex_reduce`). Gradients come from the parts'
//! rules: the gradient of the im2col reindex is the col2im scatter-add, the gemm
//! has its own.

use crate::shape::ShapeOps;
use jit_core::{Error, ExternOp, IndexExpr as E, ReduceOp, Result, Var};

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

/// `i mod n` mirrored at the edges of `0..n`: the reflect-padding index.
fn reflect(e: E, n: usize) -> E {
    let last = n as i64 - 1;
    E::c(last) - (E::c(last) - e.abs()).abs()
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

/// `torch.nn.functional.conv2d` (with `padding_mode` of `nn.Conv2d`): `x` is
/// `[N, C, H, W]`, `w` is `[O, C / groups, kh, kw]`, `b` is `[O]`.
pub fn conv2d(x: &Var, w: &Var, b: Option<&Var>, o: &Conv2dOptions) -> Result<Var> {
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
    check_bias(op, b, oc)?;
    let out_size = |len: usize, k: usize, s: usize, p: usize, d: usize| -> Result<usize> {
        let span = d * (k - 1) + 1;
        if len + 2 * p < span {
            return Err(Error::shape(
                op,
                format!(
                    "the input {:?} padded by {:?} is smaller than the dilated kernel {:?}",
                    x.shape(),
                    o.padding,
                    [d * (kh - 1) + 1, o.dilation[1] * (kw - 1) + 1]
                ),
            ));
        }
        Ok((len + 2 * p - span) / s + 1)
    };
    let oh = out_size(h, kh, o.stride[0], o.padding[0], o.dilation[0])?;
    let ow = out_size(wd, kw, o.stride[1], o.padding[1], o.dilation[1])?;
    if o.padding_mode == ConvPadding::Reflect && (o.padding[0] >= h || o.padding[1] >= wd) {
        return Err(Error::shape(
            op,
            format!("reflect padding {:?} must be smaller than the input's height and width ({h}, {wd})", o.padding),
        ));
    }
    let k = cg * kh * kw;
    let pointwise = kh == 1 && kw == 1 && o.stride == [1, 1] && o.padding == [0, 0];
    let cols = if pointwise {
        x.reshape(&[(n * g) as isize, k as isize, (h * wd) as isize])?
    } else {
        let axis = |pos: usize, tap: usize, d: usize, len: usize| {
            let e = E::idx(pos) * o.stride[d] as i64 + E::idx(tap) * o.dilation[d] as i64 - o.padding[d] as i64;
            match o.padding_mode {
                ConvPadding::Zeros => e,
                ConvPadding::Reflect => reflect(e, len),
            }
        };
        // [N, G, Cg, kh, kw, OH, OW]: one im2col kernel
        let exprs = vec![E::idx(0), E::idx(1) * cg as i64 + E::idx(2), axis(5, 3, 0, h), axis(6, 4, 1, wd)];
        x.reindex(&[n, g, cg, kh, kw, oh, ow], exprs, 0.0, vec![])?.reshape(&[
            (n * g) as isize,
            k as isize,
            (oh * ow) as isize,
        ])?
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
pub fn conv_transpose2d(x: &Var, w: &Var, b: Option<&Var>, o: &ConvTranspose2dOptions) -> Result<Var> {
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
        let full = (len - 1) * o.stride[d] + o.dilation[d] * (k - 1) + o.output_padding[d] + 1;
        full.checked_sub(2 * o.padding[d]).filter(|&s| s > 0).ok_or_else(|| {
            Error::shape(op, format!("padding {:?} leaves no output for input {:?}", o.padding, x.shape()))
        })
    };
    let (oh, ow) = (size(h, kh, 0)?, size(wd, kw, 1)?);
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
