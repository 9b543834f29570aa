//! f16 and bf16 conversions for the CPU backend, inline on f32 scalars and f32x4
//! vectors alike (integer and float instructions, no call per element): half values
//! are computed in f32, so loads widen them exactly, and casts and stores round an
//! f32 to the nearest half value, ties to even, as the `half` crate does (NaN stays
//! NaN with its sign and the top of its payload, infinities and overflow give
//! infinities, and the subnormal ranges round once).

use super::Gen;
use crate::dtype::DType;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value as CV};

impl Gen<'_, '_> {
    /// `a cc b ? t : f` on i32 or i32x4 values (`b` a constant).
    pub(super) fn select_int(&mut self, cc: IntCC, a: CV, b: i64, t: CV, f: CV) -> CV {
        let bv = self.iconst_like(a, b);
        let c = self.b.ins().icmp(cc, a, bv);
        if self.b.func.dfg.value_type(a).is_vector() {
            self.b.ins().bitselect(c, t, f)
        } else {
            self.b.ins().select(c, t, f)
        }
    }

    /// `x >> k` (logical) of i32 or i32x4 lanes.
    pub(super) fn shr_u(&mut self, x: CV, k: i64) -> CV {
        let k = self.b.ins().iconst(types::I32, k);
        self.b.ins().ushr(x, k)
    }

    /// `x << k` of i32 or i32x4 lanes.
    pub(super) fn shl(&mut self, x: CV, k: i64) -> CV {
        let k = self.b.ins().iconst(types::I32, k);
        self.b.ins().ishl(x, k)
    }

    /// `x & c` of i32 or i32x4 lanes.
    pub(super) fn and_c(&mut self, x: CV, c: i64) -> CV {
        let c = self.iconst_like(x, c);
        self.b.ins().band(x, c)
    }

    /// `x + c` (wrapping) of i32 or i32x4 lanes.
    pub(super) fn add_c(&mut self, x: CV, c: i64) -> CV {
        let c = self.iconst_like(x, c);
        self.b.ins().iadd(x, c)
    }

    /// The 16 bits of `v` (f32 or f32x4) rounded to `dtype` (f16 or bf16), in the low
    /// half of i32 lanes.
    pub(super) fn f32_to_half_bits(&mut self, v: CV, dtype: DType) -> CV {
        if dtype == DType::BF16 {
            self.f32_to_bf16_lanes(v)
        } else {
            self.f32_to_f16_lanes(v)
        }
    }

    /// f32 lanes holding the half values (`dtype`) whose bits are the low halves of
    /// the i32 lanes `bits` (exact).
    pub(super) fn half_bits_to_f32(&mut self, bits: CV, dtype: DType) -> CV {
        let float_ty = if self.b.func.dfg.value_type(bits).is_vector() { types::F32X4 } else { types::F32 };
        if dtype == DType::BF16 {
            let hi = self.shl(bits, 16);
            return self.reinterpret(float_ty, hi);
        }
        // exponent and mantissa moved into f32 position, the exponent rebased
        let em = self.and_c(bits, 0x7fff);
        let o = self.shl(em, 13);
        let exp = self.and_c(o, 0x0f80_0000);
        let o = self.add_c(o, 0x3800_0000);
        // infinities and NaN: the all-ones exponent
        let o_inf = self.add_c(o, 0x3800_0000);
        // zeros and subnormals: 2^-14 (1 + m / 1024) - 2^-14, exact
        let o_norm = self.add_c(o, 0x0080_0000);
        let f = self.reinterpret(float_ty, o_norm);
        let magic = self.fconst_like(f, 6.103_515_6e-5);
        let f = self.b.ins().fsub(f, magic);
        let int_ty = self.int_like(f);
        let o_sub = self.reinterpret(int_ty, f);
        let r = self.select_int(IntCC::Equal, exp, 0x0f80_0000, o_inf, o);
        let r = self.select_int(IntCC::Equal, exp, 0, o_sub, r);
        let sign = self.and_c(bits, 0x8000);
        let sign = self.shl(sign, 16);
        let r = self.b.ins().bor(r, sign);
        self.reinterpret(float_ty, r)
    }

    /// `v` rounded to `dtype`'s precision (f16 or bf16), as f32 lanes.
    pub(super) fn round_to_half(&mut self, v: CV, dtype: DType) -> CV {
        let bits = self.f32_to_half_bits(v, dtype);
        self.half_bits_to_f32(bits, dtype)
    }

    /// f32 to f16 bits, ties to even (after F. Giesen's branch-free conversion):
    /// normal results by adding the rounding bias to the rebased bits, subnormal ones
    /// by a float addition that aligns the kept bits at the bottom.
    fn f32_to_f16_lanes(&mut self, v: CV) -> CV {
        let int_ty = self.int_like(v);
        let float_ty = self.b.func.dfg.value_type(v);
        let u = self.reinterpret(int_ty, v);
        let sign = self.and_c(u, 0x8000_0000);
        let a = self.b.ins().bxor(u, sign);
        // normal: rebase the exponent (-112 << 23), add 0xfff and the kept lsb
        let kept = self.shr_u(a, 13);
        let odd = self.and_c(kept, 1);
        let t = self.add_c(a, 0xc800_0fff);
        let t = self.b.ins().iadd(t, odd);
        let normal = self.shr_u(t, 13);
        // subnormal or zero: |v| + 0.5 puts the result in the low bits of 0.5's
        let af = self.reinterpret(float_ty, a);
        let half = self.fconst_like(v, 0.5);
        let s = self.b.ins().fadd(af, half);
        let sb = self.reinterpret(int_ty, s);
        let sub = self.add_c(sb, -0x3f00_0000);
        // infinities, overflow and NaN (quiet, the top of the payload kept)
        let inf = self.iconst_like(v, 0x7c00);
        let payload = self.and_c(kept, 0x03ff);
        let quiet = self.iconst_like(v, 0x7e00);
        let nan = self.b.ins().bor(quiet, payload);
        let special = self.select_int(IntCC::SignedGreaterThan, a, 0x7f80_0000, nan, inf);
        let r = self.select_int(IntCC::SignedLessThan, a, 0x3880_0000, sub, normal);
        let r = self.select_int(IntCC::SignedGreaterThanOrEqual, a, 0x4780_0000, special, r);
        let sign16 = self.shr_u(sign, 16);
        self.b.ins().bor(r, sign16)
    }

    /// f32 to bf16 bits, ties to even, NaN kept quiet (`half::bf16::from_f32`).
    fn f32_to_bf16_lanes(&mut self, v: CV) -> CV {
        let int_ty = self.int_like(v);
        let u = self.reinterpret(int_ty, v);
        let hi = self.shr_u(u, 16);
        let lsb = self.and_c(hi, 1);
        let bias = self.add_c(lsb, 0x7fff);
        let sum = self.b.ins().iadd(u, bias);
        let rounded = self.shr_u(sum, 16);
        let quiet = self.iconst_like(v, 0x40);
        let quiet = self.b.ins().bor(hi, quiet);
        // NaN: the magnitude bits above the infinity's
        let mag = self.and_c(u, 0x7fff_ffff);
        self.select_int(IntCC::SignedGreaterThan, mag, 0x7f80_0000, quiet, rounded)
    }
}
