//! The workloads that the fusion tests assert kernel counts on and that the benches
//! time: one definition for both.

use jit_ops::prelude::*;

/// Ten element-wise ops (mul, add, maximum, mul, sub, abs, minimum, mul, add, sqrt).
pub fn chain(x: &Var) -> Var {
    ((((x * 1.5 + 0.25).maximum(0.0).expect("maximum") * 2.0 - 1.0).abs().minimum(3.0).expect("minimum") * 0.5) + 1.0)
        .sqrt()
}

/// [`chain`] for one f32, with the framework's NaN-propagating maximum and minimum
/// (`torch.maximum` semantics; `f32::max` would drop NaN).
pub fn chain_scalar(v: f32) -> f32 {
    let max = |a: f32, b: f32| if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) };
    let min = |a: f32, b: f32| if a.is_nan() || b.is_nan() { f32::NAN } else { a.min(b) };
    (min((max(v * 1.5 + 0.25, 0.0) * 2.0 - 1.0).abs(), 3.0) * 0.5 + 1.0).sqrt()
}

/// Instance norm of NCHW `x`: mean, biased variance, normalise, affine.
pub fn instance_norm(x: &Var, w: &Var, b: &Var) -> Var {
    let mean = x.mean(&[2, 3], true).expect("mean");
    let var = x.var(&[2, 3], false, true).expect("var");
    (x - &mean) / (var + 1e-5).sqrt() * w + b
}

/// The AdaIN operation: content normalised by its instance statistics, re-scaled by
/// the style's (unbiased variance, eps 1e-5 inside the square root).
pub fn adain(c: &Var, s: &Var) -> Var {
    let (mc, ms) = (c.mean(&[2, 3], true).expect("mean"), s.mean(&[2, 3], true).expect("mean"));
    let sc = (c.var(&[2, 3], true, true).expect("var") + 1e-5).sqrt();
    let ss = (s.var(&[2, 3], true, true).expect("var") + 1e-5).sqrt();
    (c - &mc) / sc * ss + ms
}
