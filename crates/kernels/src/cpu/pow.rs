//! `pow` of f32 values for the CPU backend, inline on f32 scalars and f32x4 vectors
//! (two f64x2 halves) instead of a library call per element.
//!
//! `|x|^y = 2^(y log2 |x|)` is computed in f64, where `log2 |x|` and `2^t` from
//! truncated series keep a relative error near 1e-14, so the one rounding to f32 at
//! the end gives the correctly rounded result except within about 1e-6 ulp of a tie.
//! The cases C's `pow` (and so PyTorch's) defines apart from that formula are fixed
//! up afterwards in f32: a zero exponent or a base of 1 give 1 (even with NaN), a
//! base of -1 to an infinite power gives 1, a negative finite base to a non-integer
//! power gives NaN, and a negative base (or -0, -inf) to an odd integer power gives
//! the negated result. Zeros, infinities and NaN otherwise come out of the formula:
//! `log2` of 0 is -inf and of inf is inf, and `2^t` clamps `t` so that it over- and
//! underflows in f32 but keeps NaN.

use super::Gen;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value as CV};

/// `1 / (2k + 1)` for `k = 0..8`: `ln m = 2 s (1 + s^2 / 3 + s^4 / 5 + ...)` with
/// `s = (m - 1) / (m + 1)`, `|s| <= 0.172` for `m` in `[sqrt(1/2), sqrt(2))`;
/// truncation error below 4e-14 relative.
const ATANH_SERIES: [f64; 8] = [1.0, 1.0 / 3.0, 1.0 / 5.0, 1.0 / 7.0, 1.0 / 9.0, 1.0 / 11.0, 1.0 / 13.0, 1.0 / 15.0];

/// `2^t` beyond these bounds is 0 or infinite in f32 (and normal in f64 within them).
const EXP2_CLAMP: f64 = 160.0;

/// 1.5 * 2^52: adding and removing it rounds an f64 of magnitude below 2^51 to an
/// integer, which the sum's low mantissa bits then hold.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

impl Gen<'_, '_> {
    /// `x ^ y` for f32 or f32x4 `x` and `y` (see the module documentation).
    pub(super) fn pow_f32(&mut self, x: CV, y: CV) -> CV {
        let r = if self.b.func.dfg.value_type(x).is_vector() {
            // lanes 2 and 3 moved to 0 and 1, each half widened to f64x2, and the
            // two narrowed halves joined again
            let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
            let high = |g: &mut Self, v: CV| {
                let b = g.b.ins().bitcast(types::I8X16, le, v);
                let mask: Vec<u8> = (8..16).chain(8..16).collect();
                let mask = g.b.func.dfg.immediates.push(mask.into());
                let s = g.b.ins().shuffle(b, b, mask);
                g.b.ins().bitcast(types::F32X4, le, s)
            };
            let (xh, yh) = (high(self, x), high(self, y));
            let halves = [(x, y), (xh, yh)].map(|(a, b)| {
                let a = self.b.ins().fvpromote_low(a);
                let b = self.b.ins().fvpromote_low(b);
                let p = self.abs_pow_f64(a, b);
                let n = self.b.ins().fvdemote(p);
                self.b.ins().bitcast(types::I8X16, le, n)
            });
            let mask: Vec<u8> = (0..8).chain(16..24).collect();
            let mask = self.b.func.dfg.immediates.push(mask.into());
            let joined = self.b.ins().shuffle(halves[0], halves[1], mask);
            self.b.ins().bitcast(types::F32X4, le, joined)
        } else {
            let a = self.b.ins().fpromote(types::F64, x);
            let b = self.b.ins().fpromote(types::F64, y);
            let p = self.abs_pow_f64(a, b);
            self.b.ins().fdemote(types::F32, p)
        };
        self.pow_special_cases(x, y, r)
    }

    /// The cases of `pow` that `2^(y log2 |x|)` (`r`) does not give, fixed in f32.
    fn pow_special_cases(&mut self, x: CV, y: CV, r: CV) -> CV {
        let zero = self.fconst_like(x, 0.0);
        let one = self.fconst_like(x, 1.0);
        let half = self.fconst_like(x, 0.5);
        let inf = self.fconst_like(x, f32::INFINITY);
        // y an integer (infinities count as even ones), and odd
        let fy = self.b.ins().floor(y);
        let integer = self.fmask(FloatCC::Equal, fy, y);
        let hy = self.b.ins().fmul(y, half);
        let fhy = self.b.ins().floor(hy);
        let even = self.fmask(FloatCC::Equal, fhy, hy);
        let odd = self.b.ins().band_not(integer, even);
        // x's sign bit set (-0 and -inf included) and an odd y: negated
        let int_ty = self.int_like(x);
        let xi = self.reinterpret(int_ty, x);
        let zi = self.iconst_like(x, 0);
        let negative = self.b.ins().icmp(IntCC::SignedLessThan, xi, zi);
        let negative =
            if self.b.func.dfg.value_type(x).is_vector() { self.reinterpret(types::F32X4, negative) } else { negative };
        let flip = self.b.ins().band(negative, odd);
        let nr = self.b.ins().fneg(r);
        let r = self.mask_select(flip, nr, r);
        // a negative finite x and a y that is not an integer, or NaN in either: NaN
        let neg_x = self.fmask(FloatCC::LessThan, x, zero);
        let ax = self.b.ins().fabs(x);
        let finite = self.fmask(FloatCC::LessThan, ax, inf);
        let neg_finite = self.b.ins().band(neg_x, finite);
        let bad = self.b.ins().band_not(neg_finite, integer);
        let unordered = self.fmask(FloatCC::Unordered, x, y);
        let bad = self.b.ins().bor(bad, unordered);
        let nan = self.fconst_like(x, f32::NAN);
        let r = self.mask_select(bad, nan, r);
        // 1: y = +-0, x = 1, or |x| = 1 and |y| = inf
        let y_zero = self.fmask(FloatCC::Equal, y, zero);
        let x_one = self.fmask(FloatCC::Equal, x, one);
        let ay = self.b.ins().fabs(y);
        let y_inf = self.fmask(FloatCC::Equal, ay, inf);
        let ax_one = self.fmask(FloatCC::Equal, ax, one);
        let unit = self.b.ins().band(ax_one, y_inf);
        let ones = self.b.ins().bor(y_zero, x_one);
        let ones = self.b.ins().bor(ones, unit);
        self.mask_select(ones, one, r)
    }

    /// `a cc b` as a mask: an i8 truth value for scalars, the comparison's lanes
    /// reinterpreted as f32x4 for vectors (so masks combine with `band` / `bor`).
    fn fmask(&mut self, cc: FloatCC, a: CV, b: CV) -> CV {
        let m = self.b.ins().fcmp(cc, a, b);
        if self.b.func.dfg.value_type(a).is_vector() {
            let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
            self.b.ins().bitcast(types::F32X4, le, m)
        } else {
            m
        }
    }

    /// `m ? t : f` for a mask from [`Gen::fmask`].
    fn mask_select(&mut self, m: CV, t: CV, f: CV) -> CV {
        if self.b.func.dfg.value_type(t).is_vector() {
            self.b.ins().bitselect(m, t, f)
        } else {
            self.b.ins().select(m, t, f)
        }
    }

    /// An f64 constant of `x`'s type (f64 or f64x2).
    fn f64_like(&mut self, x: CV, v: f64) -> CV {
        let c = self.b.ins().f64const(v);
        if self.b.func.dfg.value_type(x).is_vector() {
            self.b.ins().splat(types::F64X2, c)
        } else {
            c
        }
    }

    /// An i64 constant of `x`'s shape (i64 or i64x2).
    fn i64_like(&mut self, x: CV, v: i64) -> CV {
        let c = self.b.ins().iconst(types::I64, v);
        if self.b.func.dfg.value_type(x).is_vector() {
            self.b.ins().splat(types::I64X2, c)
        } else {
            c
        }
    }

    /// The bits of the f64 (or f64x2) `v` as type `to`, or back.
    fn bits64(&mut self, to: Type, v: CV) -> CV {
        let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let flags = if to.is_vector() { le } else { MemFlagsData::new() };
        self.b.ins().bitcast(to, flags, v)
    }

    /// `a < b ? t : f` on f64 or f64x2 values (false when either is NaN).
    fn select_lt_f64(&mut self, a: CV, b: CV, t: CV, f: CV) -> CV {
        let m = self.b.ins().fcmp(FloatCC::LessThan, a, b);
        if self.b.func.dfg.value_type(a).is_vector() {
            let m = self.bits64(types::F64X2, m);
            self.b.ins().bitselect(m, t, f)
        } else {
            self.b.ins().select(m, t, f)
        }
    }

    /// `|x|^y` as `2^(y log2 |x|)` on f64 or f64x2 values holding f32 numbers.
    fn abs_pow_f64(&mut self, x: CV, y: CV) -> CV {
        let a = self.b.ins().fabs(x);
        let l = self.log2_f64(a);
        let t = self.b.ins().fmul(y, l);
        self.exp2_f64(t)
    }

    /// `log2 a` for a normal positive f64 (every f32 but 0 widens to one), -inf for
    /// 0 and inf for inf (a finite number for NaN).
    fn log2_f64(&mut self, a: CV) -> CV {
        let vector = self.b.func.dfg.value_type(a).is_vector();
        let (int_ty, float_ty) = if vector { (types::I64X2, types::F64X2) } else { (types::I64, types::F64) };
        let bits = self.bits64(int_ty, a);
        // the biased exponent as an f64: its bits in the mantissa of 2^52
        let k52 = self.b.ins().iconst(types::I32, 52);
        let biased = self.b.ins().ushr(bits, k52);
        let two52 = self.i64_like(a, 0x4330_0000_0000_0000);
        let eb = self.b.ins().bor(biased, two52);
        let eb = self.bits64(float_ty, eb);
        let bias = self.f64_like(a, (1u64 << 52) as f64 + 1023.0);
        let e = self.b.ins().fsub(eb, bias);
        // the mantissa in [1, 2), then in [sqrt(1/2), sqrt(2))
        let mant_mask = self.i64_like(a, 0x000f_ffff_ffff_ffff);
        let one_bits = self.i64_like(a, 0x3ff0_0000_0000_0000);
        let m = self.b.ins().band(bits, mant_mask);
        let m = self.b.ins().bor(m, one_bits);
        let m = self.bits64(float_ty, m);
        let sqrt2 = self.f64_like(a, std::f64::consts::SQRT_2);
        let (half, one) = (self.f64_like(a, 0.5), self.f64_like(a, 1.0));
        let m_half = self.b.ins().fmul(m, half);
        let e_plus = self.b.ins().fadd(e, one);
        let e = self.select_lt_f64(m, sqrt2, e, e_plus);
        let m = self.select_lt_f64(m, sqrt2, m, m_half);
        // ln m = 2 s P(s^2), log2 = e + ln m / ln 2
        let num = self.b.ins().fsub(m, one);
        let den = self.b.ins().fadd(m, one);
        let s = self.b.ins().fdiv(num, den);
        let z = self.b.ins().fmul(s, s);
        let mut p = self.f64_like(a, ATANH_SERIES[ATANH_SERIES.len() - 1]);
        for &c in ATANH_SERIES[..ATANH_SERIES.len() - 1].iter().rev() {
            let cv = self.f64_like(a, c);
            p = self.mul_add(p, z, cv);
        }
        let k = self.f64_like(a, 2.0 * std::f64::consts::LOG2_E);
        let ks = self.b.ins().fmul(s, k);
        let l = self.mul_add(ks, p, e);
        // 0 and inf (NaN is the caller's)
        let tiny = self.f64_like(a, f64::MIN_POSITIVE);
        let max = self.f64_like(a, f64::MAX);
        let inf = self.f64_like(a, f64::INFINITY);
        let neg_inf = self.f64_like(a, f64::NEG_INFINITY);
        let l = self.select_lt_f64(a, tiny, neg_inf, l);
        self.select_lt_f64(a, max, l, inf)
    }

    /// `2^t` of an f64 or f64x2, `t` clamped to `[-160, 160]` (NaN kept): `t = n + r`
    /// with `n` an integer and `|r| <= 1/2`, `2^r` by its Taylor series to degree 11
    /// (truncation below 2e-13 relative), `2^n` put into the exponent bits.
    fn exp2_f64(&mut self, t: CV) -> CV {
        let vector = self.b.func.dfg.value_type(t).is_vector();
        let (int_ty, float_ty) = if vector { (types::I64X2, types::F64X2) } else { (types::I64, types::F64) };
        let (lo, hi) = (self.f64_like(t, -EXP2_CLAMP), self.f64_like(t, EXP2_CLAMP));
        let t = self.select_lt_f64(t, lo, lo, t);
        let t = self.select_lt_f64(hi, t, hi, t);
        let magic = self.f64_like(t, ROUND_MAGIC);
        let tm = self.b.ins().fadd(t, magic);
        let n = self.b.ins().fsub(tm, magic);
        let r = self.b.ins().fsub(t, n);
        // sum of (r ln 2)^k / k!, Horner in r
        let ln2 = std::f64::consts::LN_2;
        let coef: Vec<f64> = (0..12)
            .scan(1.0, |c, k| {
                let v = *c;
                *c *= ln2 / f64::from(k + 1);
                Some(v)
            })
            .collect();
        let mut p = self.f64_like(t, coef[coef.len() - 1]);
        for &c in coef[..coef.len() - 1].iter().rev() {
            let cv = self.f64_like(t, c);
            p = self.mul_add(p, r, cv);
        }
        // 2^n: (n + 1023) << 52, n from the rounded sum's low bits
        let tm_bits = self.bits64(int_ty, tm);
        let magic_bits = self.i64_like(t, ROUND_MAGIC.to_bits() as i64 - 1023);
        let e = self.b.ins().isub(tm_bits, magic_bits);
        let k52 = self.b.ins().iconst(types::I32, 52);
        let scale = self.b.ins().ishl(e, k52);
        let scale = self.bits64(float_ty, scale);
        self.b.ins().fmul(p, scale)
    }
}
