//! Element types.

use std::fmt;

/// The element type of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// Boolean, stored as one byte (0 or 1).
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

/// The three kinds of dtype, ordered for type promotion (bool < integer < float).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DTypeKind {
    /// `Bool`.
    Bool,
    /// `U8`, `I32`, `I64`.
    Int,
    /// `F16`, `BF16`, `F32`, `F64`.
    Float,
}

impl DType {
    /// Every dtype, in promotion order.
    pub const ALL: [DType; 8] =
        [DType::Bool, DType::U8, DType::I32, DType::I64, DType::F16, DType::BF16, DType::F32, DType::F64];

    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::Bool | DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// The kind (bool, integer or float).
    pub fn kind(self) -> DTypeKind {
        match self {
            DType::Bool => DTypeKind::Bool,
            DType::U8 | DType::I32 | DType::I64 => DTypeKind::Int,
            _ => DTypeKind::Float,
        }
    }

    /// True for f16, bf16, f32, f64.
    pub fn is_float(self) -> bool {
        self.kind() == DTypeKind::Float
    }

    /// True for u8, i32, i64.
    pub fn is_int(self) -> bool {
        self.kind() == DTypeKind::Int
    }

    /// The short name used in messages (`f32`, `i64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// PyTorch's promotion of two tensor dtypes: the higher kind wins; within a kind
    /// the wider type wins; f16 with bf16 gives f32.
    pub fn promote(a: DType, b: DType) -> DType {
        if a == b {
            return a;
        }
        match (a.kind(), b.kind()) {
            (ka, kb) if ka > kb => a,
            (ka, kb) if ka < kb => b,
            (DTypeKind::Float, DTypeKind::Float) => match (a, b) {
                (DType::F16, DType::BF16) | (DType::BF16, DType::F16) => DType::F32,
                _ => a.max(b),
            },
            _ => a.max(b),
        }
    }

    /// Rounds an f64 to the nearest value representable in this dtype, returned as
    /// f64 (for floats), or converts it with the cast rules (for integers and bool).
    pub fn round_f64(self, v: f64) -> f64 {
        match self {
            DType::F64 => v,
            DType::F32 => v as f32 as f64,
            DType::F16 => f16_from_f64(v).to_f64(),
            DType::BF16 => bf16_from_f64(v).to_f64(),
            DType::Bool => f64::from(u8::from(v != 0.0)),
            DType::U8 => cast_f64_to_int(v) as u8 as f64,
            DType::I32 => cast_f64_to_int(v) as i32 as f64,
            DType::I64 => cast_f64_to_int(v) as f64,
        }
    }

    /// Wraps an i64 into the range of this integer dtype (two's complement), or to
    /// 0/1 for bool. Floats convert to the nearest representable value.
    pub fn wrap_i64(self, v: i64) -> i64 {
        match self {
            DType::Bool => i64::from(v != 0),
            DType::U8 => v as u8 as i64,
            DType::I32 => v as i32 as i64,
            _ => v,
        }
    }
}

/// Float to integer conversion: truncation toward zero, NaN to 0, saturating at the
/// i64 range (what C and PyTorch do for in-range values).
pub fn cast_f64_to_int(v: f64) -> i64 {
    v as i64
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `v` as f32 rounded to odd: exact values stay, an inexact one becomes whichever
/// of its two f32 neighbours has an odd last bit. Rounding that to a format with at
/// least two fewer bits (f16, bf16) gives the correctly rounded (nearest, ties to
/// even) result, where rounding to nearest twice may not: `v` just above a half-way
/// point can land on it and then tie to even.
fn f32_round_to_odd(v: f64) -> f32 {
    let f = v as f32; // to nearest
    if f.is_nan() || f.is_infinite() || f as f64 == v || f.to_bits() & 1 == 1 {
        return f;
    }
    // inexact and even: the other neighbour, one step toward v, is odd
    let toward_larger_magnitude = v.abs() > (f as f64).abs();
    f32::from_bits(if toward_larger_magnitude { f.to_bits() + 1 } else { f.to_bits() - 1 })
}

/// `v` rounded to the nearest f16 (ties to even), once. (`half::f16::from_f64`
/// rounds twice on some machines.)
pub fn f16_from_f64(v: f64) -> half::f16 {
    half::f16::from_f32(f32_round_to_odd(v))
}

/// `v` rounded to the nearest bf16 (ties to even), once. (`half::bf16::from_f64`
/// ignores the last 32 bits of an f64's mantissa, so a value just past a half-way
/// point, an f32 with one of its last three bits set, say, rounds as if on it.)
pub fn bf16_from_f64(v: f64) -> half::bf16 {
    half::bf16::from_f32(f32_round_to_odd(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_follows_pytorch() {
        assert_eq!(DType::promote(DType::I32, DType::F16), DType::F16);
        assert_eq!(DType::promote(DType::I64, DType::I32), DType::I64);
        assert_eq!(DType::promote(DType::Bool, DType::U8), DType::U8);
        assert_eq!(DType::promote(DType::F16, DType::BF16), DType::F32);
        assert_eq!(DType::promote(DType::F32, DType::F64), DType::F64);
        assert_eq!(DType::promote(DType::U8, DType::I32), DType::I32);
    }

    #[test]
    fn rounding_to_storage() {
        assert_eq!(DType::F32.round_f64(0.1), 0.1f32 as f64);
        assert_eq!(DType::F16.round_f64(1.0 + 1e-4), 1.0);
        assert_eq!(DType::I32.round_f64(-2.7), -2.0);
        assert_eq!(DType::U8.round_f64(257.0), 1.0);
        assert_eq!(DType::Bool.round_f64(-0.5), 1.0);
        assert_eq!(DType::U8.wrap_i64(-1), 255);
    }
}
