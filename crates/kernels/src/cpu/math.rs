//! Inline f32 math for the CPU backend: `exp`, `log`, `tanh`, `erf`, `sigmoid`,
//! `sin` and `cos` generated as Cranelift instructions on f32 scalars and f32x4 vectors alike,
//! without a call per element. Each is a range reduction and a polynomial (fused
//! multiply-adds where the host has them), then the special values fixed up by
//! selects, so NaN, infinities, zeros and subnormals come out as the f64 reference
//! rounded to f32 does, within about 2e-7 relative elsewhere.
//!
//! The polynomial coefficients of `log`, `tanh`, `erf`, `sin` and `cos` were fitted for this file
//! (weighted least squares iterated toward the minimax error on Chebyshev points,
//! in f64, against the f64 functions); the ranges and the fitted errors are at each
//! function. `exp` is Cephes' `expf`.

use super::{unary_code, Gen};
use crate::meta::UnaryOp;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value as CV};

/// `log(1 + f) = f - f^2 / 2 + f^3 P(f)` for `f` in `[sqrt(1/2) - 1, sqrt(2) - 1]`,
/// `P` ascending; fitted relative error of `log(1 + f)` 7.5e-10.
const LOG_P: [f32; 9] = [
    3.333_331_3e-1,
    -2.500_001e-1,
    2.000_211_9e-1,
    -1.666_799_6e-1,
    1.421_955_1e-1,
    -1.240_559_15e-1,
    1.188_817_5e-1,
    -1.167_564_1e-1,
    6.746_601e-2,
];

/// `tanh(x) = x + x^3 P(x^2)` for `|x| < 0.625`; fitted relative error 4.4e-9.
const TANH_P: [f32; 5] = [-3.333_328e-1, 1.333_144_2e-1, -5.373_971e-2, 2.063_907_9e-2, -5.704_978_5e-3];

/// `erf(x) = x P(x^2)` for `|x| < 1`; fitted relative error 1.2e-9 (the constant
/// term is 2 / sqrt(pi) rounded to f32, the fit's value within half a step).
const ERF_P: [f32; 7] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    -3.761_262_6e-1,
    1.128_358_54e-1,
    -2.685_381_1e-2,
    5.188_327_7e-3,
    -8.010_192_5e-4,
    7.853_858e-5,
];

/// `erf(x) = Q(x - 1.75)` for `1 <= x <= 2.5` ([`ERF_TAIL_FROM`]), `Q` ascending;
/// fitted relative error 6.5e-8 evaluated in f32 with fused multiply-adds (under
/// one unit in the last place against `erf` of the f32 argument).
const ERF_MID: [f32; 11] = [
    0.986_671_7,
    0.052_774_98,
    -0.092_356_06,
    0.090_157_81,
    -0.048_105_747,
    0.006_619_055,
    0.008_987_446,
    -0.006_038_168,
    0.000_652_752_06,
    0.000_863_421_94,
    -0.000_327_303_2,
];

/// The center of [`ERF_MID`]'s range.
const ERF_MID_CENTER: f32 = 1.75;

/// From this `|x|` on, `erf` is computed from `exp(-x^2)` and [`ERFC_R`].
const ERF_TAIL_FROM: f32 = 2.5;

/// `erfc(x) exp(x^2) = R(1 / x)` for `1 <= x <= 4`; fitted relative error 6.5e-8.
const ERFC_R: [f32; 9] = [
    2.531_028_6e-4,
    5.593_157e-1,
    4.016_066_7e-2,
    -4.646_708_4e-1,
    4.809_480_6e-1,
    -2.190_816_1e-1,
    4.037_504_6e-3,
    3.799_476_5e-2,
    -1.137_375_7e-2,
];

/// `sin(r) = r + r^3 P(r^2)` for `|r| <= pi / 4`; fitted absolute error 5e-9.
const SIN_P: [f32; 3] = [-1.666_665_5e-1, 8.332_16e-3, -1.951_528_2e-4];

/// `cos(r) = 1 - r^2 / 2 + r^4 P(r^2)` for `|r| <= pi / 4`; fitted absolute error 3e-9.
const COS_P: [f32; 3] = [4.166_664_6e-2, -1.388_731_6e-3, 2.443_315_7e-5];

/// `pi / 2` in three f32 parts (Cody and Waite): the first two have 8 and 11
/// significant bits, so `n` times either is exact for `|n| < 2^13`.
const PIO2_PARTS: [f32; 3] = [1.570_312_5, 4.837_513e-4, 7.549_79e-8];

/// Below this magnitude `sin` and `cos` reduce their argument inline (the quadrant
/// `n <= 5216`, see [`PIO2_PARTS`]); a vector with any lane beyond (infinities and
/// huge arguments among them) calls the f64 helper for each lane instead.
const TRIG_INLINE_MAX: f32 = 8192.0;

impl Gen<'_, '_> {
    fn is_vector(&self, x: CV) -> bool {
        self.b.func.dfg.value_type(x).is_vector()
    }

    /// The integer type with `x`'s lanes (i32 or i32x4).
    pub(super) fn int_like(&self, x: CV) -> Type {
        if self.is_vector(x) {
            types::I32X4
        } else {
            types::I32
        }
    }

    /// An i32 constant (its low 32 bits) of `x`'s shape (splatted for vectors).
    pub(super) fn iconst_like(&mut self, x: CV, v: i64) -> CV {
        let c = self.b.ins().iconst(types::I32, v & 0xffff_ffff);
        if self.is_vector(x) {
            self.b.ins().splat(types::I32X4, c)
        } else {
            c
        }
    }

    /// The bits of `v` reinterpreted as type `to` (lane for lane).
    pub(super) fn reinterpret(&mut self, to: Type, v: CV) -> CV {
        let flags = if self.is_vector(v) || to.is_vector() {
            MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
        } else {
            MemFlagsData::new()
        };
        self.b.ins().bitcast(to, flags, v)
    }

    /// `a * b + c` on f32 or f32x4 values: one fused rounding where the host has FMA
    /// instructions, a multiplication and an addition elsewhere.
    pub(super) fn mul_add(&mut self, a: CV, b: CV, c: CV) -> CV {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let ab = self.b.ins().fmul(a, b);
            self.b.ins().fadd(ab, c)
        }
    }

    /// `a * c + b` with the constant `c`.
    fn mul_add_c(&mut self, a: CV, c: f32, b: CV) -> CV {
        let cv = self.fconst_like(a, c);
        self.mul_add(a, cv, b)
    }

    /// The polynomial with ascending coefficients `c` at `x` (Horner).
    fn poly(&mut self, x: CV, c: &[f32]) -> CV {
        let mut p = self.fconst_like(x, c[c.len() - 1]);
        for &k in c[..c.len() - 1].iter().rev() {
            let kv = self.fconst_like(x, k);
            p = self.mul_add(p, x, kv);
        }
        p
    }

    /// `a cc b ? t : f` on f32 or f32x4 values.
    fn select_cmp(&mut self, cc: FloatCC, a: CV, b: CV, t: CV, f: CV) -> CV {
        if self.is_vector(a) {
            self.select_lanes(cc, a, b, t, f)
        } else {
            let c = self.b.ins().fcmp(cc, a, b);
            self.b.ins().select(c, t, f)
        }
    }

    /// `a < b ? t : f` on f32 or f32x4 values (false when either is NaN); on vectors
    /// as a bitselect of the comparison mask, which x86 lowers to one `minps` /
    /// `maxps` when the operands line up as in [`Gen::exp_f32`]'s clamp.
    pub(super) fn select_lt(&mut self, a: CV, b: CV, t: CV, f: CV) -> CV {
        self.select_cmp(FloatCC::LessThan, a, b, t, f)
    }

    /// `|r|` with the sign of `x`, for `r >= 0` or NaN (an OR of `x`'s sign bit).
    fn with_sign_of(&mut self, r: CV, x: CV) -> CV {
        let sign_bit = self.fconst_like(x, -0.0);
        let sign = self.b.ins().band(x, sign_bit);
        self.b.ins().bor(r, sign)
    }

    /// `exp` of an f32 or f32x4 without a call (Cephes `expf`: `x = n ln2 + r`,
    /// a degree-6 polynomial in `r`, then scaling by `2^n` in two halves so that
    /// results down to the subnormals round once). Peak relative error about 2e-7.
    pub(super) fn exp_f32(&mut self, x: CV) -> CV {
        let int_ty = self.int_like(x);
        let float_ty = self.b.func.dfg.value_type(x);
        let (lo, hi) = (self.fconst_like(x, -104.0), self.fconst_like(x, 89.0));
        // the clamp keeps NaN: `x < lo ? lo : x` and `hi < x ? hi : x` are false for
        // it (on vectors the pattern x86's maxps / minps implement, which return
        // their second operand, x, for NaN: one instruction each instead of the
        // NaN-propagating fmax / fmin sequences)
        let x = self.select_lt(x, lo, lo, x);
        let x = self.select_lt(hi, x, hi, x);
        let log2e = self.fconst_like(x, std::f32::consts::LOG2_E);
        let t = self.b.ins().fmul(x, log2e);
        // round to nearest (even) by adding and removing 1.5 * 2^23: the integer
        // lands in the low mantissa bits (|t| < 2^22 after the clamp)
        let magic = self.fconst_like(x, 12_582_912.0);
        let tm = self.b.ins().fadd(t, magic);
        let n = self.b.ins().fsub(tm, magic);
        // r = x - n c1 - n c2 (c1 + c2 = ln 2; c1 has 9 bits, so n c1 is exact)
        let r = self.mul_add_c(n, -0.693_359_4, x);
        let r = self.mul_add_c(n, 2.121_944_4e-4, r);
        let p = self.poly(r, &[0.5, 1.666_666_5e-1, 4.166_579_6e-2, 8.333_452e-3, 1.398_199_9e-3, 1.987_569_1e-4]);
        let r2 = self.b.ins().fmul(r, r);
        let p = self.mul_add(p, r2, r);
        let one = self.fconst_like(x, 1.0);
        let p = self.b.ins().fadd(p, one);
        // 2^n as two factors 2^(n/2) and 2^(n - n/2), each a normal number
        let tm_bits = self.reinterpret(int_ty, tm);
        let magic_bits = self.iconst_like(x, 0x4b40_0000);
        let ni = self.b.ins().isub(tm_bits, magic_bits);
        let n1 = self.b.ins().sshr_imm_u(ni, 1);
        let n2 = self.b.ins().isub(ni, n1);
        let scale = |g: &mut Self, k: CV| {
            let bias = g.iconst_like(x, 127);
            let e = g.b.ins().iadd(k, bias);
            let bits = g.b.ins().ishl_imm_u(e, 23);
            g.reinterpret(float_ty, bits)
        };
        let s1 = scale(self, n1);
        let s2 = scale(self, n2);
        let p = self.b.ins().fmul(p, s1);
        self.b.ins().fmul(p, s2)
    }

    /// `1 / (1 + exp(-x))` of an f32 or f32x4 with the inline `exp`.
    pub(super) fn sigmoid_f32(&mut self, x: CV) -> CV {
        let nx = self.b.ins().fneg(x);
        let e = self.exp_f32(nx);
        let one = self.fconst_like(x, 1.0);
        let d = self.b.ins().fadd(one, e);
        self.b.ins().fdiv(one, d)
    }

    /// Natural logarithm: `x = m 2^e` with `m` in `[sqrt(1/2), sqrt(2))` (subnormals
    /// scaled by 2^23 first), `log x = e ln 2 + log(1 + f)` with `f = m - 1` (exact),
    /// `ln 2` in two parts as in [`Gen::exp_f32`]. Negative and NaN give NaN, zeros
    /// `-inf`, `+inf` itself.
    pub(super) fn log_f32(&mut self, x: CV) -> CV {
        let int_ty = self.int_like(x);
        let float_ty = self.b.func.dfg.value_type(x);
        let min_normal = self.fconst_like(x, f32::MIN_POSITIVE);
        let two_23 = self.fconst_like(x, 8_388_608.0);
        let scaled = self.b.ins().fmul(x, two_23);
        let xn = self.select_lt(x, min_normal, scaled, x);
        let (minus_23, zero) = (self.fconst_like(x, -23.0), self.fconst_like(x, 0.0));
        let e_shift = self.select_lt(x, min_normal, minus_23, zero);
        let bits = self.reinterpret(int_ty, xn);
        // exponent and mantissa in [1, 2)
        let biased = self.b.ins().ushr_imm_u(bits, 23);
        let bias = self.iconst_like(x, 127);
        let e = self.b.ins().isub(biased, bias);
        let mask = self.iconst_like(x, 0x007f_ffff);
        let one_bits = self.iconst_like(x, 0x3f80_0000);
        let mant = self.b.ins().band(bits, mask);
        let mant = self.b.ins().bor(mant, one_bits);
        let m = self.reinterpret(float_ty, mant);
        let e = self.b.ins().fcvt_from_sint(float_ty, e);
        let e = self.b.ins().fadd(e, e_shift);
        // into [sqrt(1/2), sqrt(2)): halve m (exact) and count one more
        let sqrt2 = self.fconst_like(x, std::f32::consts::SQRT_2);
        let half = self.fconst_like(x, 0.5);
        let one = self.fconst_like(x, 1.0);
        let m_half = self.b.ins().fmul(m, half);
        let e_plus = self.b.ins().fadd(e, one);
        let e = self.select_cmp(FloatCC::GreaterThanOrEqual, m, sqrt2, e_plus, e);
        let m = self.select_cmp(FloatCC::GreaterThanOrEqual, m, sqrt2, m_half, m);
        let f = self.b.ins().fsub(m, one);
        let z = self.b.ins().fmul(f, f);
        let p = self.poly(f, &LOG_P);
        let fz = self.b.ins().fmul(f, z);
        let y = self.b.ins().fmul(fz, p);
        let y = self.mul_add_c(e, -2.121_944_4e-4, y);
        let y = self.mul_add_c(z, -0.5, y);
        let r = self.b.ins().fadd(f, y);
        let r = self.mul_add_c(e, 0.693_359_4, r);
        // special values
        let inf = self.fconst_like(x, f32::INFINITY);
        let r = self.select_cmp(FloatCC::Equal, x, inf, inf, r);
        let neg_inf = self.fconst_like(x, f32::NEG_INFINITY);
        let r = self.select_cmp(FloatCC::Equal, x, zero, neg_inf, r);
        let nan = self.fconst_like(x, f32::NAN);
        self.select_cmp(FloatCC::UnorderedOrLessThan, x, zero, nan, r)
    }

    /// Hyperbolic tangent: `x (1 + x^2 P(x^2))` below 0.625 in magnitude, else
    /// `1 - 2 / (exp(2|x|) + 1)` with `x`'s sign (1 once `exp` overflows).
    pub(super) fn tanh_f32(&mut self, x: CV) -> CV {
        let z = self.b.ins().fmul(x, x);
        let p = self.poly(z, &TANH_P);
        // x (1 + z P): a product keeps the sign of -0 (x + x z P would not)
        let one = self.fconst_like(x, 1.0);
        let q = self.mul_add(z, p, one);
        let small = self.b.ins().fmul(x, q);
        let a = self.b.ins().fabs(x);
        let a2 = self.b.ins().fadd(a, a);
        let s = self.exp_f32(a2);
        let two = self.fconst_like(x, 2.0);
        let d = self.b.ins().fadd(s, one);
        let q = self.b.ins().fdiv(two, d);
        let large = self.b.ins().fsub(one, q);
        let large = self.with_sign_of(large, x);
        let bound = self.fconst_like(x, 0.625);
        self.select_lt(a, bound, small, large)
    }

    /// Error function in three ranges of `|x|`: `x P(x^2)` below 1, `Q(|x| - 1.75)`
    /// with `x`'s sign up to [`ERF_TAIL_FROM`], and beyond it
    /// `1 - exp(-x^2) R(1 / |x|)` with `x`'s sign, `|x|` clamped to 4 (beyond which
    /// `erf` rounds to 1 in f32). The two polynomials are computed for every lane and
    /// the tail only behind a branch taken when some lane needs it, which for
    /// activations (GELU's `x / sqrt 2` of values mostly within a few units) is rare:
    /// the division and the `exp` are most of the cost.
    pub(super) fn erf_f32(&mut self, x: CV) -> Result<CV, String> {
        let ty = self.b.func.dfg.value_type(x);
        let z = self.b.ins().fmul(x, x);
        let p = self.poly(z, &ERF_P);
        let small = self.b.ins().fmul(x, p);
        let a = self.b.ins().fabs(x);
        let center = self.fconst_like(x, ERF_MID_CENTER);
        let u = self.b.ins().fsub(a, center);
        let mid = self.poly(u, &ERF_MID);
        let mid = self.with_sign_of(mid, x);
        let one = self.fconst_like(x, 1.0);
        let near = self.select_lt(a, one, small, mid);
        // an ordered comparison: NaN stays with the polynomials, which return it
        let from = self.fconst_like(x, ERF_TAIL_FROM);
        let far = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, a, from);
        let far = if self.is_vector(x) { self.b.ins().vany_true(far) } else { far };
        self.branch_value(
            far,
            ty,
            &mut |g| {
                let large = g.erf_tail(x, a);
                Ok(g.select_cmp(FloatCC::GreaterThanOrEqual, a, from, large, near))
            },
            &mut |_| Ok(near),
        )
    }

    /// `erf(x)` for `|x| >= 1` (`a` is `|x|`): `1 - exp(-a^2) R(1 / a)` with `x`'s
    /// sign, `a` clamped to 4.
    fn erf_tail(&mut self, x: CV, a: CV) -> CV {
        // NaN passes the clamp (see `exp_f32`)
        let four = self.fconst_like(x, 4.0);
        let a = self.select_lt(four, a, four, a);
        let one = self.fconst_like(x, 1.0);
        let u = self.b.ins().fdiv(one, a);
        let r = self.poly(u, &ERFC_R);
        let a2 = self.b.ins().fmul(a, a);
        let na2 = self.b.ins().fneg(a2);
        let e = self.exp_f32(na2);
        let er = self.b.ins().fmul(e, r);
        let large = self.b.ins().fsub(one, er);
        self.with_sign_of(large, x)
    }

    /// `sin` or `cos` of an f32 or f32x4: inline ([`Gen::sin_cos_inline`]) when every
    /// lane is within [`TRIG_INLINE_MAX`] in magnitude or NaN, else the f64 helper
    /// for each lane (a branch, so the common case pays one compare).
    pub(super) fn trig_f32(&mut self, x: CV, op: UnaryOp) -> Result<CV, String> {
        let ty = self.b.func.dfg.value_type(x);
        let a = self.b.ins().fabs(x);
        let max = self.fconst_like(x, TRIG_INLINE_MAX);
        let far = self.b.ins().fcmp(FloatCC::GreaterThan, a, max);
        let far = if self.is_vector(x) { self.b.ins().vany_true(far) } else { far };
        self.branch_value(
            far,
            ty,
            &mut |g| {
                let code = g.i32c(unary_code(op));
                if g.is_vector(x) {
                    g.per_lane(x, &mut |g, s| g.call("h_unary_f32", &[code, s]))
                } else {
                    g.call("h_unary_f32", &[code, x])
                }
            },
            &mut |g| Ok(g.sin_cos_inline(x, op == UnaryOp::Cos)),
        )
    }

    /// `sin x` (or `cos x` with `cos`) for `|x| <= TRIG_INLINE_MAX`: `x = n pi/2 + r`
    /// with `n` rounded to nearest and `r` reduced in three parts (exact products),
    /// then `sin r` or `cos r` by the quadrant `n` (`n + 1` for `cos`), negated in
    /// quadrants 2 and 3. Absolute error about 1e-7; `sin(-0)` is `-0`, NaN stays NaN.
    fn sin_cos_inline(&mut self, x: CV, cos: bool) -> CV {
        let int_ty = self.int_like(x);
        let float_ty = self.b.func.dfg.value_type(x);
        let two_over_pi = self.fconst_like(x, std::f32::consts::FRAC_2_PI);
        let t = self.b.ins().fmul(x, two_over_pi);
        // round to nearest by adding and removing 1.5 * 2^23 (see `exp_f32`)
        let magic = self.fconst_like(x, 12_582_912.0);
        let tm = self.b.ins().fadd(t, magic);
        let n = self.b.ins().fsub(tm, magic);
        let r = self.mul_add_c(n, -PIO2_PARTS[0], x);
        let r = self.mul_add_c(n, -PIO2_PARTS[1], r);
        let r = self.mul_add_c(n, -PIO2_PARTS[2], r);
        let z = self.b.ins().fmul(r, r);
        // sin r = r + r z P(z), which has r's sign; r = -0 would come out +0 from
        // the sum, so the sign is r's bit on the magnitude
        let ps = self.poly(z, &SIN_P);
        let rz = self.b.ins().fmul(r, z);
        let sin_r = self.mul_add(rz, ps, r);
        let sin_r = self.b.ins().fabs(sin_r);
        let sin_r = self.with_sign_of(sin_r, r);
        // cos r = 1 - z / 2 + z^2 P(z)
        let pc = self.poly(z, &COS_P);
        let z2 = self.b.ins().fmul(z, z);
        let one = self.fconst_like(x, 1.0);
        let c = self.mul_add_c(z, -0.5, one);
        let cos_r = self.mul_add(z2, pc, c);
        // the quadrant's low bits from the rounded sum's mantissa
        let tm_bits = self.reinterpret(int_ty, tm);
        let q = self.add_c(tm_bits, if cos { -0x4b40_0000 + 1 } else { -0x4b40_0000 });
        let odd = self.and_c(q, 1);
        let sin_bits = self.reinterpret(int_ty, sin_r);
        let cos_bits = self.reinterpret(int_ty, cos_r);
        let r = self.select_int(IntCC::Equal, odd, 0, sin_bits, cos_bits);
        let neg = self.and_c(q, 2);
        let sign = self.shl(neg, 30);
        let r = self.b.ins().bxor(r, sign);
        self.reinterpret(float_ty, r)
    }
}
