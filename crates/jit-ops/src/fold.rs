//! Sliding windows as columns and back: PyTorch's `F.unfold` (im2col) and `F.fold`
//! (col2im), and `F.pixel_shuffle` / `F.pixel_unshuffle`.
//!
//! `unfold` is the im2col that `conv2d` uses (one reindex of the zero-padded input;
//! its gradient is the col2im gather), and `fold` is its adjoint, with `unfold` as
//! its gradient. Patch-based style transfer (style swap, CNNMRF) is written with
//! them: `unfold` to cut a feature map into patches, a convolution with the patches
//! as weights to match them, `fold` to paste the chosen patches back.

use crate::conv::{check_window_params, col2im, im2col, Im2col};
use crate::shape::ShapeOps;
use jit_core::{Error, Result, Var};
use std::sync::Arc;

/// The window arguments of [`unfold`] and [`fold`] (PyTorch's `kernel_size`,
/// `dilation`, `padding`, `stride`, as (height, width)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldOptions {
    /// Window size.
    pub kernel: [usize; 2],
    /// Spacing of the window's taps.
    pub dilation: [usize; 2],
    /// Zeros added on each side.
    pub padding: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
}

impl FoldOptions {
    /// A square `kernel` window, no dilation or padding, stride 1.
    pub fn new(kernel: usize) -> Self {
        FoldOptions { kernel: [kernel; 2], dilation: [1, 1], padding: [0, 0], stride: [1, 1] }
    }

    /// With this stride in both directions.
    pub fn stride(self, stride: usize) -> Self {
        FoldOptions { stride: [stride; 2], ..self }
    }

    /// With this padding on every side.
    pub fn padding(self, padding: usize) -> Self {
        FoldOptions { padding: [padding; 2], ..self }
    }

    /// With this dilation in both directions.
    pub fn dilation(self, dilation: usize) -> Self {
        FoldOptions { dilation: [dilation; 2], ..self }
    }

    /// Checks the options and returns the number of windows along height and width
    /// of a `size` plane.
    fn windows(&self, op: &str, size: [usize; 2]) -> Result<[usize; 2]> {
        let o = self;
        if o.kernel.contains(&0) || o.stride.contains(&0) || o.dilation.contains(&0) {
            return Err(Error::argument(
                op,
                format!(
                    "kernel_size {:?}, stride {:?} and dilation {:?} must be positive",
                    o.kernel, o.stride, o.dilation
                ),
            ));
        }
        check_window_params(
            op,
            &[("kernel_size", o.kernel), ("stride", o.stride), ("padding", o.padding), ("dilation", o.dilation)],
        )?;
        let mut out = [0; 2];
        for d in 0..2 {
            // below 2^31 each: no overflow in 64 bits
            let span = o.dilation[d] * (o.kernel[d] - 1) + 1;
            let padded = size[d] + 2 * o.padding[d];
            if padded < span {
                return Err(Error::shape(
                    op,
                    format!(
                        "the plane {size:?} padded by {:?} is smaller than the dilated window {:?}",
                        o.padding,
                        [o.dilation[0] * (o.kernel[0] - 1) + 1, o.dilation[1] * (o.kernel[1] - 1) + 1]
                    ),
                ));
            }
            out[d] = (padded - span) / o.stride[d] + 1;
        }
        Ok(out)
    }

    fn geometry(&self, out: [usize; 2]) -> Im2col {
        Im2col {
            groups: 1,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            out,
        }
    }
}

/// `torch.nn.functional.unfold`: `x` is `[N, C, H, W]` (or `[C, H, W]`); the result
/// is `[N, C * kh * kw, L]` (or `[C * kh * kw, L]`), column `l` holding window `l`
/// (row-major over the window positions), row `(c * kh + i) * kw + j` its tap
/// `(i, j)` of channel `c`; zeros where the window covers padding.
pub fn unfold(x: &Var, o: &FoldOptions) -> Result<Var> {
    let (x4, batched) = match *x.shape() {
        [_, _, _, _] => (x.clone(), true),
        [c, h, w] => (x.reshape(&[1, c as isize, h as isize, w as isize])?, false),
        _ => return Err(Error::shape("unfold", format!("input must be 3-D or 4-D, got shape {:?}", x.shape()))),
    };
    let [n, c, h, w] = [x4.shape()[0], x4.shape()[1], x4.shape()[2], x4.shape()[3]];
    let [oh, ow] = o.windows("unfold", [h, w])?;
    let rows = c * o.kernel[0] * o.kernel[1];
    let cols = im2col(&x4, o.geometry([oh, ow]))?;
    if batched {
        cols.reshape(&[n as isize, rows as isize, (oh * ow) as isize])
    } else {
        cols.reshape(&[rows as isize, (oh * ow) as isize])
    }
}

/// `torch.nn.functional.fold`: the adjoint of [`unfold`]. `cols` is
/// `[N, C * kh * kw, L]` (or `[C * kh * kw, L]`) with `L` the number of windows of
/// an `output_size` plane; the result is `[N, C, H, W]` (or `[C, H, W]`), each pixel
/// the sum of the window taps that cover it. `fold(unfold(x))` is `x` times the
/// number of windows covering each pixel.
pub fn fold(cols: &Var, output_size: [usize; 2], o: &FoldOptions) -> Result<Var> {
    let (c3, batched) = match *cols.shape() {
        [_, _, _] => (cols.clone(), true),
        [r, l] => (cols.reshape(&[1, r as isize, l as isize])?, false),
        _ => return Err(Error::shape("fold", format!("input must be 2-D or 3-D, got shape {:?}", cols.shape()))),
    };
    let [n, rows, l] = [c3.shape()[0], c3.shape()[1], c3.shape()[2]];
    let [oh, ow] = o.windows("fold", output_size)?;
    let taps = o.kernel[0] * o.kernel[1];
    if rows % taps != 0 {
        return Err(Error::shape(
            "fold",
            format!(
                "input {:?}: its {rows} rows are not a multiple of the {taps} taps of kernel_size {:?}",
                cols.shape(),
                o.kernel
            ),
        ));
    }
    if l != oh * ow {
        return Err(Error::shape(
            "fold",
            format!(
                "input {:?} has {l} columns, but an output of size {output_size:?} has {oh}x{ow} = {} windows of \
                 kernel_size {:?}, dilation {:?}, padding {:?}, stride {:?}",
                cols.shape(),
                oh * ow,
                o.kernel,
                o.dilation,
                o.padding,
                o.stride
            ),
        ));
    }
    let c = rows / taps;
    let [h, w] = output_size;
    let s = o.geometry([oh, ow]);
    let [kh, kw] = o.kernel;
    let full = [n, 1, c, kh, kw, oh, ow].map(|d| d as isize);
    let forward =
        move |xs: &[Var]| -> Result<(Var, Vec<Var>)> { Ok((col2im(&xs[0].reshape(&full)?, s, [n, c, h, w])?, vec![])) };
    let backward = move |_: &[Var], g: &Var| -> Result<Vec<Option<Var>>> {
        let dcols = im2col(g, s)?.reshape(&[n as isize, rows as isize, l as isize])?;
        Ok(vec![Some(dcols)])
    };
    let y = jit_core::custom_op("fold", &[c3], forward, Arc::new(backward))?;
    if batched {
        Ok(y)
    } else {
        y.reshape(&[c as isize, h as isize, w as isize])
    }
}

/// The leading dims and the last three of an input of [`pixel_shuffle`] or
/// [`pixel_unshuffle`], or the error for a rank below 3 or a zero factor.
fn split_planes(op: &str, x: &Var, r: usize) -> Result<(Vec<isize>, [usize; 3])> {
    let s = x.shape();
    match *s {
        [ref lead @ .., c, h, w] if r > 0 => Ok((lead.iter().map(|&d| d as isize).collect(), [c, h, w])),
        _ => Err(Error::shape(
            op,
            format!("needs an input of at least 3 dims and a positive factor, got shape {s:?} and {r}"),
        )),
    }
}

/// `lead` followed by `dims`.
fn dims_after(lead: &[isize], dims: &[usize]) -> Vec<isize> {
    lead.iter().copied().chain(dims.iter().map(|&d| d as isize)).collect()
}

/// `torch.nn.functional.pixel_shuffle`: `[*, C r², H, W]` -> `[*, C, H r, W r]`,
/// output pixel `(h r + i, w r + j)` of channel `c` taken from channel
/// `c r² + i r + j`.
pub fn pixel_shuffle(x: &Var, r: usize) -> Result<Var> {
    let (lead, [c, h, w]) = split_planes("pixel_shuffle", x, r)?;
    if c % (r * r) != 0 {
        return Err(Error::shape(
            "pixel_shuffle",
            format!("the {c} channels of {:?} are not divisible by the square of the upscale factor {r}", x.shape()),
        ));
    }
    let k = lead.len() as isize;
    // [.., c, i, j, h, w] -> [.., c, h, i, w, j]
    let perm: Vec<isize> = (0..k).chain([k, k + 3, k + 1, k + 4, k + 2]).collect();
    x.reshape(&dims_after(&lead, &[c / (r * r), r, r, h, w]))?
        .permute(&perm)?
        .reshape(&dims_after(&lead, &[c / (r * r), h * r, w * r]))
}

/// `torch.nn.functional.pixel_unshuffle`: the inverse of [`pixel_shuffle`],
/// `[*, C, H r, W r]` -> `[*, C r², H, W]`.
pub fn pixel_unshuffle(x: &Var, r: usize) -> Result<Var> {
    let (lead, [c, h, w]) = split_planes("pixel_unshuffle", x, r)?;
    if h % r != 0 || w % r != 0 {
        return Err(Error::shape(
            "pixel_unshuffle",
            format!(
                "the height {h} and width {w} of {:?} are not both divisible by the downscale factor {r}",
                x.shape()
            ),
        ));
    }
    let k = lead.len() as isize;
    // [.., c, h, i, w, j] -> [.., c, i, j, h, w]
    let perm: Vec<isize> = (0..k).chain([k, k + 2, k + 4, k + 1, k + 3]).collect();
    x.reshape(&dims_after(&lead, &[c, h / r, r, w / r, r]))?
        .permute(&perm)?
        .reshape(&dims_after(&lead, &[c * r * r, h / r, w / r]))
}
