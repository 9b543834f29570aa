//! Special values: `torch.isnan`, `isinf`, `isposinf`, `isneginf`, `isfinite` and
//! `nan_to_num`, as comparisons and `where` (so they fuse into their neighbours).
//! Integer and bool inputs have no special values: the tests are constant and
//! `nan_to_num` returns its input.

use jit_core::{DType, Result, Var};

/// Tests for NaN and infinities, and their replacement.
pub trait FiniteOps {
    /// True where the value is NaN.
    fn isnan(&self) -> Result<Var>;
    /// True where the value is +inf or -inf.
    fn isinf(&self) -> Result<Var>;
    /// True where the value is +inf.
    fn isposinf(&self) -> Result<Var>;
    /// True where the value is -inf.
    fn isneginf(&self) -> Result<Var>;
    /// True where the value is neither NaN nor infinite.
    fn isfinite(&self) -> Result<Var>;
    /// NaN replaced by `nan`, +inf by `posinf` and -inf by `neginf` (by default the
    /// largest and the lowest finite value of the dtype), as `torch.nan_to_num`. The
    /// gradient passes where the input is finite and is zero elsewhere.
    fn nan_to_num(&self, nan: f64, posinf: Option<f64>, neginf: Option<f64>) -> Result<Var>;
}

/// The largest finite value of a floating-point dtype.
fn max_finite(dt: DType) -> f64 {
    match dt {
        DType::F16 => jit_core::f16::MAX.to_f64(),
        DType::BF16 => jit_core::bf16::MAX.to_f64(),
        DType::F32 => f32::MAX as f64,
        _ => f64::MAX,
    }
}

fn constant(x: &Var, v: bool) -> Var {
    Var::full(x.shape(), f64::from(u8::from(v)), DType::Bool)
}

impl FiniteOps for Var {
    fn isnan(&self) -> Result<Var> {
        if !self.dtype().is_float() {
            return Ok(constant(self, false));
        }
        self.ne(self)
    }

    fn isinf(&self) -> Result<Var> {
        if !self.dtype().is_float() {
            return Ok(constant(self, false));
        }
        self.abs().eq(f64::INFINITY)
    }

    fn isposinf(&self) -> Result<Var> {
        if !self.dtype().is_float() {
            return Ok(constant(self, false));
        }
        self.eq(f64::INFINITY)
    }

    fn isneginf(&self) -> Result<Var> {
        if !self.dtype().is_float() {
            return Ok(constant(self, false));
        }
        self.eq(f64::NEG_INFINITY)
    }

    fn isfinite(&self) -> Result<Var> {
        if !self.dtype().is_float() {
            return Ok(constant(self, true));
        }
        // NaN compares false
        self.abs().lt(f64::INFINITY)
    }

    fn nan_to_num(&self, nan: f64, posinf: Option<f64>, neginf: Option<f64>) -> Result<Var> {
        let dt = self.dtype();
        if !dt.is_float() {
            return Ok(self.clone());
        }
        let big = max_finite(dt);
        let x = Var::where_(&self.isnan()?, nan, self)?;
        let x = Var::where_(&self.isposinf()?, posinf.unwrap_or(big), &x)?;
        Var::where_(&self.isneginf()?, neginf.unwrap_or(-big), &x)
    }
}
