//! Bilinear resizing (NCHW) as `torch.nn.functional.interpolate(mode="bilinear")`,
//! with `align_corners` either way, by output size or by a scale factor that gives
//! a whole output size (where PyTorch's `1 / scale` and `in / out` agree). Each axis is
//! two gathers (`reindex` with exact integer index arithmetic) blended with weights
//! computed from the output index, so the whole resize fuses into one kernel.
//! Nearest resizing is `ShapeOps::interpolate_nearest`.

use jit_core::{DType, Error, IndexExpr as E, Result, Var};

/// Output size or scale factor of a resize.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resize {
    /// The output height and width.
    Size([usize; 2]),
    /// Multiply height and width by these factors (output sizes are floored).
    Scale([f64; 2]),
}

/// Sampling along one axis of `len` resized to `out`, for output index `pos` of
/// `shape`: the low and high source index expressions and the weight of the high
/// one (as a value of `dtype`).
fn axis_sampling(
    pos: usize,
    len: usize,
    out: usize,
    align_corners: bool,
    shape: &[usize],
    dtype: DType,
) -> Result<(E, E, Var)> {
    let i = Var::index(shape, pos, DType::F64)?;
    // PyTorch's area_pixel_compute_source_index, in f64
    let src = if align_corners {
        let r = if out > 1 { (len as f64 - 1.0) / (out as f64 - 1.0) } else { 0.0 };
        i.try_mul(r)?
    } else {
        i.try_add(0.5)?.try_mul(len as f64 / out as f64)?.try_sub(0.5)?.maximum(0.0)?
    };
    let lam = src.try_sub(src.floor())?.cast(dtype);
    // the same low index in exact integer arithmetic, for the gathers
    let low = if align_corners {
        if out > 1 {
            (E::idx(pos) * (len as i64 - 1)).floor_div(out as i64 - 1)
        } else {
            E::c(0)
        }
    } else {
        // floor(((2i + 1) len - out) / (2 out)), clamped at 0
        (E::idx(pos) * (2 * len as i64) + (len as i64 - out as i64)).floor_div(2 * out as i64).max(0)
    };
    let low = low.min(len as i64 - 1);
    let high = (low.clone() + 1).min(len as i64 - 1);
    Ok((low, high, lam))
}

/// `F.interpolate(x, size | scale_factor, mode="bilinear", align_corners)` for
/// `[N, C, H, W]` float inputs.
pub fn upsample_bilinear2d(x: &Var, resize: Resize, align_corners: bool) -> Result<Var> {
    let op = "upsample_bilinear2d";
    let [n, c, h, w] = match *x.shape() {
        [a, b, c, d] => [a, b, c, d],
        _ => return Err(Error::shape(op, format!("input must be 4-D [N, C, H, W], got shape {:?}", x.shape()))),
    };
    if !x.dtype().is_float() {
        return Err(Error::dtype(op, format!("needs a floating-point input, got {}", x.dtype())));
    }
    let (oh, ow) = match resize {
        Resize::Size([oh, ow]) => (oh, ow),
        Resize::Scale([sh, sw]) => {
            let out = |len: usize, s: f64| -> Result<usize> {
                let o = len as f64 * s;
                if !(s > 0.0 && s.is_finite()) || o.fract() != 0.0 {
                    return Err(Error::argument(
                        op,
                        format!("scale factor {s} does not give a whole output size from {len}; pass the size instead"),
                    ));
                }
                Ok(o as usize)
            };
            (out(h, sh)?, out(w, sw)?)
        }
    };
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        return Err(Error::shape(op, format!("cannot resize {:?} to {:?}", x.shape(), [oh, ow])));
    }
    let dt = x.dtype();
    // rows: [N, C, OH, W]
    let rows_shape = [n, c, oh, w];
    let (lo, hi, lam) = axis_sampling(2, h, oh, align_corners, &rows_shape, dt)?;
    let gather = |v: &Var, shape: &[usize], axis: usize, e: E| {
        let mut exprs = vec![E::idx(0), E::idx(1), E::idx(2), E::idx(3)];
        exprs[axis] = e;
        v.reindex(shape, exprs, 0.0, vec![])
    };
    let blend = |a: Var, b: Var, lam: &Var| -> Result<Var> { a.try_add(&b.try_sub(&a)?.try_mul(lam)?) };
    let rows = blend(gather(x, &rows_shape, 2, lo)?, gather(x, &rows_shape, 2, hi)?, &lam)?;
    let out_shape = [n, c, oh, ow];
    let (lo, hi, lam) = axis_sampling(3, w, ow, align_corners, &out_shape, dt)?;
    blend(gather(&rows, &out_shape, 3, lo)?, gather(&rows, &out_shape, 3, hi)?, &lam)
}
