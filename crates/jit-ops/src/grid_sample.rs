//! `F.grid_sample` and `F.affine_grid` (spatial transformers, warping a frame by an
//! optical flow): sampling `[N, C, H, W]` inputs at the points of a `[N, Ho, Wo, 2]`
//! grid of normalised `(x, y)` coordinates in `[-1, 1]`.
//!
//! Written on the other ops, so that it fuses and differentiates like them: each
//! grid coordinate is unnormalised and moved by the padding mode in element-wise
//! arithmetic (PyTorch's `grid_sampler_compute_source_index`), each corner is a
//! `take_along_dim` gather from the flattened input with its index clamped into range
//! and its weight zeroed where the corner lies outside the input. Gradients flow to
//! the input (the gathers' scatter-adds) and to the grid (through the bilinear
//! weights and the padding's clip and reflections), as PyTorch's.

use crate::indexing::IndexOps;
use crate::shape::ShapeOps;
use jit_core::{DType, Error, Result, Var};

/// How [`grid_sample`] interpolates (`mode`; bicubic is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GridMode {
    /// The four neighbours, weighted by distance (PyTorch's default).
    #[default]
    Bilinear,
    /// The nearest pixel (ties to even, as `nearbyint`); no gradient to the grid.
    Nearest,
}

/// What [`grid_sample`] reads outside the input (`padding_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GridPadding {
    /// Zeros (PyTorch's default).
    #[default]
    Zeros,
    /// The nearest border pixel (coordinates clipped into the input).
    Border,
    /// The input mirrored at its borders (at the edge pixels' centres with
    /// `align_corners`, else at their outer edges), then clipped.
    Reflection,
}

fn float_value(op: &str, what: &str, x: &Var) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::dtype(op, format!("{what} must be floating point, got {} (cast it first)", x.dtype())))
    }
}

/// PyTorch's `reflect_coordinates`: `x` mirrored into `[twice_low / 2, twice_high / 2]`.
fn reflect(x: &Var, twice_low: i64, twice_high: i64) -> Result<Var> {
    if twice_low == twice_high {
        return Ok(x.full_like(0.0));
    }
    let min = twice_low as f64 / 2.0;
    let span = (twice_high - twice_low) as f64 / 2.0;
    let d = x.try_sub(min)?.abs();
    let extra = d.remainder(span)?;
    let flips = d.try_div(span)?.floor();
    let even = flips.remainder(2.0)?.eq(0.0)?;
    Var::where_(&even, &extra.try_add(min)?, &extra.try_neg()?.try_add(span + min)?)
}

/// One grid coordinate `g` in `[-1, 1]` to a source pixel coordinate along an axis of
/// `size` pixels, moved into the input by the padding mode.
fn source_coordinate(g: &Var, size: usize, padding: GridPadding, align_corners: bool) -> Result<Var> {
    // the CPU kernel's forms: (g + 1) (size - 1) / 2, or (g + 1) size / 2 - 0.5
    let x = if align_corners {
        g.try_add(1.0)?.try_mul((size as f64 - 1.0) / 2.0)?
    } else {
        g.try_add(1.0)?.try_mul(size as f64 / 2.0)?.try_sub(0.5)?
    };
    let clip = |x: &Var| -> Result<Var> { x.maximum(0.0)?.minimum(size as f64 - 1.0) };
    match padding {
        GridPadding::Zeros => Ok(x),
        GridPadding::Border => clip(&x),
        GridPadding::Reflection => {
            let s = size as i64;
            let r = if align_corners { reflect(&x, 0, 2 * (s - 1))? } else { reflect(&x, -1, 2 * s - 1)? };
            clip(&r)
        }
    }
}

/// `F.grid_sample(input, grid, mode, padding_mode, align_corners)` for a `[N, C, H, W]`
/// input and a `[N, Ho, Wo, 2]` grid of `(x, y)` in `[-1, 1]` (`-1` is the left or top
/// edge: the first pixel's centre with `align_corners`, its outer edge without);
/// returns `[N, C, Ho, Wo]`. Grid points that are NaN or infinite read zeros.
pub fn grid_sample(input: &Var, grid: &Var, mode: GridMode, padding: GridPadding, align_corners: bool) -> Result<Var> {
    let op = "grid_sample";
    if let Some(v) = crate::autocast::widened(&[input, grid]) {
        return grid_sample(&v[0], &v[1], mode, padding, align_corners);
    }
    let ([n, c, h, w], [ho, wo]) = match (input.shape(), grid.shape()) {
        (&[n, c, h, w], &[gn, ho, wo, 2]) if gn == n => ([n, c, h, w], [ho, wo]),
        _ => {
            return Err(Error::shape(
                op,
                format!(
                    "expected an input [N, C, H, W] and a grid [N, Ho, Wo, 2] with the same N, got {:?} and {:?}",
                    input.shape(),
                    grid.shape()
                ),
            ))
        }
    };
    float_value(op, "input", input)?;
    float_value(op, "grid", grid)?;
    if input.dtype() != grid.dtype() {
        return Err(Error::dtype(
            op,
            format!("input and grid must have the same dtype, got {} and {}", input.dtype(), grid.dtype()),
        ));
    }
    if h == 0 || w == 0 {
        return Err(Error::shape(op, format!("the input {:?} has no pixels to sample", input.shape())));
    }
    let m = ho * wo;
    let coord = |k: usize, size: usize| -> Result<Var> {
        let g = grid.narrow(3, k, 1)?.reshape(&[n as isize, 1, m as isize])?;
        source_coordinate(&g, size, padding, align_corners)
    };
    let (ix, iy) = (coord(0, w)?, coord(1, h)?); // [N, 1, Ho Wo]
    let flat = input.reshape(&[n as isize, c as isize, (h * w) as isize])?;
    // one corner: the pixel at (x, y) (whole numbers), times `weight`, where it lies
    // inside the input (comparisons are false for NaN, so NaN reads nothing); the flat
    // index in integers (an f32 one would lose pixels beyond 2^24)
    let corner = |x: &Var, y: &Var, weight: Option<&Var>| -> Result<Var> {
        let inside = x
            .ge(0.0)?
            .logical_and(&x.le(w as f64 - 1.0)?)?
            .logical_and(&y.ge(0.0)?)?
            .logical_and(&y.le(h as f64 - 1.0)?)?;
        let whole = |v: &Var| -> Result<Var> { Ok(Var::where_(&inside, v, 0.0)?.detach().cast(DType::I64)) };
        let at = whole(y)?.try_mul(w as i64)?.try_add(&whole(x)?)?;
        let v = flat.take_along_dim(&at, 2)?;
        let v = match weight {
            Some(wt) => v.try_mul(wt)?,
            None => v,
        };
        Var::where_(&inside, &v, 0.0)
    };
    let out = match mode {
        GridMode::Nearest => corner(&ix.round(), &iy.round(), None)?,
        GridMode::Bilinear => {
            let (x0, y0) = (ix.floor().detach(), iy.floor().detach());
            let (x1, y1) = (x0.try_add(1.0)?, y0.try_add(1.0)?);
            // PyTorch's weights: the opposite corner's distances
            let (e, s) = (ix.try_sub(&x0)?, iy.try_sub(&y0)?); // east and south fractions
            let (wd, nd) = (x1.try_sub(&ix)?, y1.try_sub(&iy)?); // west and north
            let nw = corner(&x0, &y0, Some(&wd.try_mul(&nd)?))?;
            let ne = corner(&x1, &y0, Some(&e.try_mul(&nd)?))?;
            let sw = corner(&x0, &y1, Some(&wd.try_mul(&s)?))?;
            let se = corner(&x1, &y1, Some(&e.try_mul(&s)?))?;
            nw.try_add(&ne)?.try_add(&sw)?.try_add(&se)?
        }
    };
    out.reshape(&[n as isize, c as isize, ho as isize, wo as isize])
}

/// PyTorch's `linspace_from_neg_one`: `n` points from -1 to 1 (scaled by `(n - 1) / n`
/// without `align_corners`, the pixel centres), `[0]` for `n <= 1`.
fn base_coordinates(n: usize, align_corners: bool) -> Vec<f64> {
    if n <= 1 {
        return vec![0.0; n];
    }
    let step = 2.0 / (n as f64 - 1.0);
    (0..n)
        .map(|i| {
            let v = -1.0 + step * i as f64;
            if align_corners {
                v
            } else {
                v * (n as f64 - 1.0) / n as f64
            }
        })
        .collect()
}

/// `F.affine_grid(theta, size, align_corners)` for 2-d transforms: `theta` `[N, 2, 3]`
/// maps each output pixel's normalised `(x, y, 1)` to the `(x, y)` to sample, for an
/// output `size = [N, C, H, W]`; returns the `[N, H, W, 2]` grid for [`grid_sample`].
/// Differentiable in `theta`.
pub fn affine_grid(theta: &Var, size: [usize; 4], align_corners: bool) -> Result<Var> {
    let op = "affine_grid";
    let [n, _, h, w] = size;
    if theta.shape() != [n, 2, 3] {
        return Err(Error::shape(
            op,
            format!("theta must be [N, 2, 3] with N = {n} for size {size:?}, got {:?}", theta.shape()),
        ));
    }
    float_value(op, "theta", theta)?;
    let (xs, ys) = (base_coordinates(w, align_corners), base_coordinates(h, align_corners));
    let mut base = Vec::with_capacity(h * w * 3);
    for y in &ys {
        for x in &xs {
            base.extend_from_slice(&[*x, *y, 1.0]);
        }
    }
    let base = Var::from_vec(base, &[1, h * w, 3])?.cast(theta.dtype());
    // [1, HW, 3] x [N, 3, 2] -> [N, HW, 2]
    let grid = crate::linalg::matmul(&base, &theta.transpose(1, 2)?)?;
    grid.reshape(&[n as isize, h as isize, w as isize, 2])
}
