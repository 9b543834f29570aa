//! CUDA C from the kernel IR.
//!
//! One thread per output position in a grid-stride loop; a reduction kernel also
//! gets a block-per-output variant (threads stride over the reduction domain, then
//! warp shuffles and shared memory combine them, no atomics), which the runtime
//! picks when each output reduces at least 128 elements; scatter kernels run in one
//! thread. The source needs no headers (NVRTC
//! from the pip wheel ships none): f16 / bf16 conversions, Philox and floor division
//! are written out in the prelude. Integer arithmetic wraps (done in unsigned), float
//! to integer conversion truncates and saturates with NaN to 0, max / min propagate
//! NaN: the semantics of the CPU backends.
//!
//! Positions, loop indices and index expressions have the type `IX`, defined per
//! module: 64-bit, or 32-bit for launches where [`narrow_fits`] proves that every
//! index value (each sub-expression, over the launch's ranges) fits, which makes
//! the divisions and modulos that decompose positions several times cheaper.

use crate::dtype::DType;
use crate::expr::IndexExpr;
use crate::ir::{Indirect, Inst, Kernel, Store, Value};
use crate::meta::{BinaryOp, Distribution, ReduceOp, UnaryOp};
use std::fmt::Write;

/// Device functions every kernel may use.
pub const PRELUDE: &str = r#"
typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
#define J_NAN __int_as_float(0x7fc00000)
#define J_INF __int_as_float(0x7f800000)
__device__ __forceinline__ i64 j_add(i64 a, i64 b) { return (i64)((u64)a + (u64)b); }
__device__ __forceinline__ i64 j_sub(i64 a, i64 b) { return (i64)((u64)a - (u64)b); }
__device__ __forceinline__ i64 j_mul(i64 a, i64 b) { return (i64)((u64)a * (u64)b); }
__device__ __forceinline__ i64 j_fdiv(i64 a, i64 b) {
  if (b == 0) return 0;
  if (b == -1) return (i64)(0ULL - (u64)a);
  i64 q = a / b, r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? q - 1 : q;
}
__device__ __forceinline__ i64 j_fmod(i64 a, i64 b) {
  if (b == 0 || b == -1) return 0;
  i64 r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
/* 32-bit index arithmetic (the narrow variants, used when every index value of a
   launch provably fits in 31 bits, so nothing wraps) */
__device__ __forceinline__ int j_add(int a, int b) { return a + b; }
__device__ __forceinline__ int j_sub(int a, int b) { return a - b; }
__device__ __forceinline__ int j_mul(int a, int b) { return a * b; }
__device__ __forceinline__ int j_fdiv(int a, int b) {
  if (b == 0) return 0;
  int q = a / b, r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? q - 1 : q;
}
__device__ __forceinline__ int j_fmod(int a, int b) {
  if (b == 0) return 0;
  int r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
__device__ __forceinline__ i64 j_powi(i64 a, i64 b) {
  if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0);
  u64 r = 1, x = (u64)a; u64 e = (u64)b;
  while (e) { if (e & 1) r *= x; x *= x; e >>= 1; }
  return (i64)r;
}
__device__ __forceinline__ float j_maxf(float a, float b) { return (a != a || b != b) ? J_NAN : fmaxf(a, b); }
__device__ __forceinline__ float j_minf(float a, float b) { return (a != a || b != b) ? J_NAN : fminf(a, b); }
__device__ __forceinline__ double j_maxd(double a, double b) { return (a != a || b != b) ? (double)J_NAN : fmax(a, b); }
__device__ __forceinline__ double j_mind(double a, double b) { return (a != a || b != b) ? (double)J_NAN : fmin(a, b); }
__device__ __forceinline__ float j_remf(float a, float b) { float r = fmodf(a, b); return (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) ? r + b : r; }
__device__ __forceinline__ double j_remd(double a, double b) { double r = fmod(a, b); return (r != 0.0 && ((r < 0.0) != (b < 0.0))) ? r + b : r; }
__device__ __forceinline__ float j_sigmoidf(float x) { if (x >= 0.0f) return 1.0f / (1.0f + expf(-x)); float e = expf(x); return e / (1.0f + e); }
__device__ __forceinline__ double j_sigmoidd(double x) { if (x >= 0.0) return 1.0 / (1.0 + exp(-x)); double e = exp(x); return e / (1.0 + e); }
__device__ __forceinline__ float j_f16_to_f32(u16 h) {
  u32 sign = ((u32)h & 0x8000u) << 16, exp = ((u32)h >> 10) & 0x1fu, man = (u32)h & 0x3ffu;
  if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return __uint_as_float(sign);
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}
__device__ __forceinline__ u16 j_f32_to_f16(float f) {
  u32 x = __float_as_uint(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (u16)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  if (ax >= 0x477ff000u) return (u16)(sign | 0x7c00u);
  if (ax < 0x38800000u) {
    if (ax < 0x33000000u) return (u16)sign;
    u32 e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e;
    u32 v = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (v & 1u))) v++;
    return (u16)(sign | v);
  }
  u32 v = ((ax - 0x38000000u) >> 13), rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (v & 1u))) v++;
  return (u16)(sign | v);
}
__device__ __forceinline__ float j_f64_to_f32_odd(double d) {
  // rounds to odd (truncate, then set the last bit if inexact): a second rounding
  // to f16 or bf16 is then the correct rounding of `d`
  float f = (float)d;
  double back = (double)f;
  if (f != f || back == d) return f;
  u32 u = __float_as_uint(f);
  if (fabs(back) > fabs(d)) u -= 1u;
  return __uint_as_float(u | 1u);
}
__device__ __forceinline__ float j_bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }
__device__ __forceinline__ u16 j_f32_to_bf16(float f) {
  u32 u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (u16)(u >> 16);
}
__device__ __forceinline__ void j_philox(u64 k, u64 seed, u32 out[4]) {
  u32 c0 = (u32)k, c1 = (u32)(k >> 32), c2 = 0, c3 = 0, k0 = (u32)seed, k1 = (u32)(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    if (r > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    u64 p0 = (u64)0xD2511F53u * c0, p1 = (u64)0xCD9E8D57u * c2;
    u32 n0 = (u32)(p1 >> 32) ^ c1 ^ k0, n2 = (u32)(p0 >> 32) ^ c3 ^ k1;
    c1 = (u32)p1; c3 = (u32)p0; c0 = n0; c2 = n2;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}
__device__ __forceinline__ double j_uniform(i64 seed, i64 k) { u32 w[4]; j_philox((u64)k, (u64)seed, w); return (double)(w[0] >> 8) * (1.0 / 16777216.0); }
__device__ __forceinline__ double j_normal(i64 seed, i64 k) {
  u32 w[4]; j_philox((u64)k, (u64)seed, w);
  double u1 = (double)((w[0] >> 8) + 1) * (1.0 / 16777216.0), u2 = (double)(w[1] >> 8) * (1.0 / 16777216.0);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
"#;

fn ctype(d: DType) -> &'static str {
    match d {
        DType::F16 | DType::BF16 | DType::F32 => "float",
        DType::F64 => "double",
        _ => "i64",
    }
}

/// The C type a value of `d` is stored as in device memory.
pub fn storage(d: DType) -> &'static str {
    match d {
        DType::Bool | DType::U8 => "u8",
        DType::I32 => "int",
        DType::I64 => "i64",
        DType::F16 | DType::BF16 => "u16",
        DType::F32 => "float",
        DType::F64 => "double",
    }
}

fn iexpr(e: &IndexExpr) -> String {
    use IndexExpr as E;
    match e {
        E::Const(v) => format!("((IX){v}LL)"),
        E::Idx(k) => format!("i{k}"),
        E::Arg(k) => format!("((IX)m.a[{k}])"),
        E::Add(a, b) => format!("j_add({}, {})", iexpr(a), iexpr(b)),
        E::Sub(a, b) => format!("j_sub({}, {})", iexpr(a), iexpr(b)),
        E::Mul(a, b) => format!("j_mul({}, {})", iexpr(a), iexpr(b)),
        E::FloorDiv(a, b) => format!("j_fdiv({}, {})", iexpr(a), iexpr(b)),
        E::Mod(a, b) => format!("j_fmod({}, {})", iexpr(a), iexpr(b)),
        E::Min(a, b) => format!("min({}, {})", iexpr(a), iexpr(b)),
        E::Max(a, b) => format!("max({}, {})", iexpr(a), iexpr(b)),
        E::Cmp(op, a, b) => format!("(IX)({} {} {})", iexpr(a), op.symbol(), iexpr(b)),
        E::Select(c, t, o) => format!("(({}) != 0 ? {} : {})", iexpr(c), iexpr(t), iexpr(o)),
    }
}

fn float_lit(v: f64, d: DType) -> String {
    let single = ctype(d) == "float";
    if v.is_nan() {
        return if single { "J_NAN".into() } else { "(double)J_NAN".into() };
    }
    if v.is_infinite() {
        let s = if v > 0.0 { "" } else { "-" };
        return if single { format!("{s}J_INF") } else { format!("{s}(double)J_INF") };
    }
    if single {
        format!("{:e}f", d.round_f64(v) as f32)
    } else {
        format!("{v:e}")
    }
}

/// The value of `d` held in a C expression `x` of type `ctype(from)`, converted with
/// the cast rules.
fn convert(x: &str, from: DType, to: DType) -> String {
    let (fc, tc) = (ctype(from), ctype(to));
    match to {
        DType::F32 | DType::F64 => {
            if fc == tc {
                x.to_string()
            } else {
                format!("({tc})({x})")
            }
        }
        // from a double: one rounding, through round-to-odd f32
        DType::F16 if fc == "double" => format!("j_f16_to_f32(j_f32_to_f16(j_f64_to_f32_odd({x})))"),
        DType::BF16 if fc == "double" => format!("j_bf16_to_f32(j_f32_to_bf16(j_f64_to_f32_odd({x})))"),
        DType::F16 => format!("j_f16_to_f32(j_f32_to_f16((float)({x})))"),
        DType::BF16 => format!("j_bf16_to_f32(j_f32_to_bf16((float)({x})))"),
        DType::Bool => format!("(i64)(({x}) != 0)"),
        _ => {
            let i = match fc {
                "float" => format!("__float2ll_rz({x})"),
                "double" => format!("__double2ll_rz({x})"),
                _ => x.to_string(),
            };
            wrap(&i, to)
        }
    }
}

fn wrap(x: &str, d: DType) -> String {
    match d {
        DType::I32 => format!("(i64)(int)(u32)(u64)({x})"),
        DType::U8 => format!("(i64)(u8)(u64)({x})"),
        DType::Bool => format!("(i64)(({x}) != 0)"),
        _ => x.to_string(),
    }
}

fn load(input: usize, d: DType, off: &str) -> String {
    let raw = format!("((const {}*)in{input})[{off}]", storage(d));
    match d {
        DType::F16 => format!("j_f16_to_f32({raw})"),
        DType::BF16 => format!("j_bf16_to_f32({raw})"),
        DType::F32 | DType::F64 | DType::I64 => raw,
        _ => format!("(i64){raw}"),
    }
}

fn store_expr(d: DType, v: &str) -> String {
    match d {
        DType::F16 => format!("j_f32_to_f16({v})"),
        DType::BF16 => format!("j_f32_to_bf16({v})"),
        DType::Bool => format!("(u8)(({v}) != 0)"),
        DType::U8 => format!("(u8)(u64)({v})"),
        DType::I32 => format!("(int)(u32)(u64)({v})"),
        _ => v.to_string(),
    }
}

/// `single` or `double` spelling of a call, by whether the value is f32-computed.
fn by_width(f: bool, single: String, double: String) -> String {
    if f {
        single
    } else {
        double
    }
}

fn unary(op: UnaryOp, x: &str, d: DType) -> String {
    let c = ctype(d);
    if c == "i64" {
        return match op {
            UnaryOp::Neg => wrap(&format!("j_sub((i64)0, {x})"), d),
            UnaryOp::Abs => wrap(&format!("({x} < 0 ? j_sub((i64)0, {x}) : {x})"), d),
            UnaryOp::Not => format!("(i64)({x} == 0)"),
            _ => x.to_string(),
        };
    }
    let f = c == "float";
    let name = |s: &str, dbl: &str| if f { format!("{s}({x})") } else { format!("{dbl}({x})") };
    match op {
        UnaryOp::Neg => format!("(-{x})"),
        UnaryOp::Abs => name("fabsf", "fabs"),
        UnaryOp::Exp => name("expf", "exp"),
        UnaryOp::Log => name("logf", "log"),
        UnaryOp::Sqrt => name("sqrtf", "sqrt"),
        UnaryOp::Rsqrt => by_width(f, format!("(1.0f / sqrtf({x}))"), format!("(1.0 / sqrt({x}))")),
        UnaryOp::Recip => by_width(f, format!("(1.0f / {x})"), format!("(1.0 / {x})")),
        UnaryOp::Sin => name("sinf", "sin"),
        UnaryOp::Cos => name("cosf", "cos"),
        UnaryOp::Tanh => name("tanhf", "tanh"),
        UnaryOp::Sigmoid => name("j_sigmoidf", "j_sigmoidd"),
        UnaryOp::Erf => name("erff", "erf"),
        UnaryOp::Floor => name("floorf", "floor"),
        UnaryOp::Round => name("rintf", "rint"),
        UnaryOp::Not => format!("(({x}) == 0)"),
    }
}

fn binary(op: BinaryOp, a: &str, b: &str, operand: DType, d: DType) -> String {
    let c = ctype(operand);
    let cmp = |s: &str| format!("(i64)({a} {s} {b})");
    match op {
        BinaryOp::Eq => return cmp("=="),
        BinaryOp::Ne => return cmp("!="),
        BinaryOp::Lt => return cmp("<"),
        BinaryOp::Le => return cmp("<="),
        BinaryOp::Gt => return cmp(">"),
        BinaryOp::Ge => return cmp(">="),
        _ => {}
    }
    if c == "i64" {
        let r = match op {
            BinaryOp::Add => format!("j_add({a}, {b})"),
            BinaryOp::Sub => format!("j_sub({a}, {b})"),
            BinaryOp::Mul => format!("j_mul({a}, {b})"),
            BinaryOp::Div => format!("j_fdiv({a}, {b})"),
            BinaryOp::Mod => format!("j_fmod({a}, {b})"),
            BinaryOp::Pow => format!("j_powi({a}, {b})"),
            BinaryOp::Max => format!("max({a}, {b})"),
            BinaryOp::Min => format!("min({a}, {b})"),
            BinaryOp::And => format!("({a} & {b})"),
            _ => format!("({a} | {b})"),
        };
        return wrap(&r, d);
    }
    let f = c == "float";
    match op {
        BinaryOp::Add => format!("({a} + {b})"),
        BinaryOp::Sub => format!("({a} - {b})"),
        BinaryOp::Mul => format!("({a} * {b})"),
        BinaryOp::Div => format!("({a} / {b})"),
        BinaryOp::Pow => by_width(f, format!("powf({a}, {b})"), format!("pow({a}, {b})")),
        BinaryOp::Max => by_width(f, format!("j_maxf({a}, {b})"), format!("j_maxd({a}, {b})")),
        BinaryOp::Min => by_width(f, format!("j_minf({a}, {b})"), format!("j_mind({a}, {b})")),
        BinaryOp::Mod => by_width(f, format!("j_remf({a}, {b})"), format!("j_remd({a}, {b})")),
        _ => "0".into(),
    }
}

fn combine(op: ReduceOp, acc: &str, v: &str, d: DType) -> String {
    if ctype(d) == "i64" {
        return match op {
            ReduceOp::Sum => format!("j_add({acc}, {v})"),
            ReduceOp::Prod => format!("j_mul({acc}, {v})"),
            ReduceOp::Max => format!("max({acc}, {v})"),
            ReduceOp::Min => format!("min({acc}, {v})"),
        };
    }
    binary(op.combiner(), acc, v, d, d)
}

fn values(out: &mut String, vals: &[Value], inputs: &[DType], prefix: &str, indent: &str) {
    values_with(out, vals, inputs, prefix, indent, &|_| None);
}

/// [`values`], where `lane_load(k)` may give the expression of load `k` (one lane
/// of a 16-byte vector load) instead of a load of its own.
fn values_with(
    out: &mut String,
    vals: &[Value],
    inputs: &[DType],
    prefix: &str,
    indent: &str,
    lane_load: &dyn Fn(usize) -> Option<String>,
) {
    for (k, v) in vals.iter().enumerate() {
        let d = v.dtype;
        let r = |id: &usize| format!("{prefix}{id}");
        let e = match &v.inst {
            Inst::Load { input, .. } if lane_load(k).is_some() => {
                let lane = lane_load(k).unwrap_or_default();
                if inputs[*input] == DType::F32 {
                    lane
                } else {
                    format!("(i64){lane}")
                }
            }
            Inst::Load { input, offset, guard, fill } => {
                let l = load(*input, inputs[*input], &iexpr(offset));
                match guard {
                    None => l,
                    Some(g) => format!("(({}) != 0 ? {l} : {})", iexpr(g), const_of(*fill, d)),
                }
            }
            Inst::Gather { input, offset, at, guard } => {
                let j = r(&at.value);
                let mut ok = indirect_ok(&j, at);
                if let Some(g) = guard {
                    ok = format!("({}) != 0 && {ok}", iexpr(g));
                }
                let l = load(*input, inputs[*input], &indirect_offset(offset, &j, at));
                format!("(({ok}) ? {l} : {})", const_of(0.0, d))
            }
            Inst::Const(c) => const_of(*c, d),
            Inst::Param(p) => convert(&format!("m.p[{p}]"), DType::F64, d),
            Inst::Index(ix) => convert(&iexpr(ix), DType::I64, d),
            Inst::Random { seed_arg, dist, counter } => {
                let (f, a, b) = match *dist {
                    Distribution::Uniform { low, high } => ("j_uniform", low, high - low),
                    Distribution::Normal { mean, std } => ("j_normal", mean, std),
                };
                let x = format!("({a:e} + {b:e} * {f}(m.a[{seed_arg}], {}))", iexpr(counter));
                convert(&x, DType::F64, d)
            }
            Inst::Unary(op, a) => unary(*op, &r(a), d),
            Inst::Binary(op, a, b) => binary(*op, &r(a), &r(b), vals[*a].dtype, d),
            Inst::Where(c, a, b) => format!("({} != 0 ? {} : {})", r(c), r(a), r(b)),
            Inst::Cast(a) => convert(&r(a), vals[*a].dtype, d),
            Inst::Acc(a) => format!("acc{a}"),
        };
        let _ = writeln!(out, "{indent}const {} {prefix}{k} = {e};", ctype(d));
    }
}

/// Whether the data-dependent index held in the C value `j` lies in
/// `0..at.extent` (compared in 64 bits, before any narrowing).
fn indirect_ok(j: &str, at: &Indirect) -> String {
    format!("(i64)({j}) >= 0 && (i64)({j}) < (i64){}", iexpr(&at.extent))
}

/// `offset + j * at.stride` in the index type (only evaluated where
/// [`indirect_ok`] holds, so `j` fits it).
fn indirect_offset(offset: &IndexExpr, j: &str, at: &Indirect) -> String {
    format!("j_add({}, j_mul((IX)({j}), {}))", iexpr(offset), iexpr(&at.stride))
}

fn const_of(c: f64, d: DType) -> String {
    if d.is_float() {
        float_lit(c, d)
    } else {
        format!("{}LL", d.round_f64(c) as i64)
    }
}

/// CUDA C for `kernel` as `extern "C" __global__ void {name}(...)`, without the
/// prelude. Parameters: `n` (output positions), for scatter kernels `row_len` (see
/// [`crate::scatter_split`]), the input pointers, the output
/// pointers, then the metadata struct `m` by value: `m.a` integer arguments, `m.o`
/// the output shape, `m.r` the reduction shape (i64) and `m.p` parameters (f64).
pub fn kernel_source(kernel: &Kernel, name: &str) -> String {
    with_index_type(IndexWidth::Wide, grid_kernel(kernel, name))
}

/// The integer type of a kernel variant's positions, loop indices and index
/// expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexWidth {
    /// 64-bit (`i64`): any size.
    Wide,
    /// 32-bit (`int`): every index value of the launch fits (cheaper division and
    /// modulo, fewer registers).
    Narrow,
}

/// `body` (written with the index type `IX`) with `IX` defined as `width`'s type.
fn with_index_type(width: IndexWidth, body: String) -> String {
    let ty = if width == IndexWidth::Narrow { "int" } else { "i64" };
    format!("#define IX {ty}\n{body}#undef IX\n")
}

/// The grid-stride (or scatter-row) kernel, with index type `IX`.
fn grid_kernel(kernel: &Kernel, name: &str) -> String {
    let mut s = kernel_head(kernel, name);
    if kernel.has_scatter() {
        // rows of `row_len` positions that write disjoint elements (one row of `n`
        // when the launch could not prove any split), one thread per row, each row
        // in order: deterministic, without atomics
        let _ = writeln!(s, "  const IX rows = (n + row_len - 1) / row_len;");
        let _ = writeln!(
            s,
            "  for (IX row = (IX)blockIdx.x * (IX)blockDim.x + (IX)threadIdx.x; row < rows; row += (IX)gridDim.x * (IX)blockDim.x) {{"
        );
        let _ = writeln!(s, "  const IX row_end = row * row_len + row_len < n ? row * row_len + row_len : n;");
        let _ = writeln!(s, "  for (IX p = row * row_len; p < row_end; p += 1) {{");
    } else {
        let _ = writeln!(
            s,
            "  for (IX p = (IX)blockIdx.x * (IX)blockDim.x + (IX)threadIdx.x; p < n; p += (IX)gridDim.x * (IX)blockDim.x) {{"
        );
    }
    out_indices(&mut s, kernel);
    if kernel.red_rank > 0 {
        reduction_loop(&mut s, kernel, "0", "1");
    }
    values(&mut s, &kernel.body, &kernel.inputs, "b", "    ");
    for (k, o) in kernel.outputs.iter().enumerate() {
        let v = format!("b{}", o.value);
        match &o.store {
            Store::Dense => {
                let _ = writeln!(s, "    out{k}[p] = {};", store_expr(o.dtype, &v));
            }
            Store::Scatter { op, offset, guard, at, .. } => {
                match at {
                    None => {
                        let _ = writeln!(s, "    if (({}) != 0) {{", iexpr(guard));
                        let _ = writeln!(s, "      const IX t = {};", iexpr(offset));
                    }
                    Some(at) => {
                        let j = format!("b{}", at.value);
                        let _ = writeln!(s, "    if (({}) != 0 && {}) {{", iexpr(guard), indirect_ok(&j, at));
                        let _ = writeln!(s, "      const IX t = {};", indirect_offset(offset, &j, at));
                    }
                }
                let old = match o.dtype {
                    DType::F16 => format!("j_f16_to_f32(out{k}[t])"),
                    DType::BF16 => format!("j_bf16_to_f32(out{k}[t])"),
                    DType::F32 | DType::F64 | DType::I64 => format!("out{k}[t]"),
                    _ => format!("(i64)out{k}[t]"),
                };
                let c = combine(*op, &old, &v, o.dtype);
                let _ = writeln!(s, "      out{k}[t] = {};", store_expr(o.dtype, &c));
                let _ = writeln!(s, "    }}");
            }
        }
    }
    let _ = writeln!(s, "  }}");
    if kernel.has_scatter() {
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// The identity of reduction `r` as a C literal.
fn identity_lit(r: &crate::ir::Reduction) -> String {
    if r.dtype.is_float() {
        float_lit(r.op.identity_f64(), r.dtype)
    } else {
        format!("{}LL", r.op.identity_for(r.dtype))
    }
}

/// Decomposes the output position `p` into the output indices `i0..`.
fn out_indices(s: &mut String, kernel: &Kernel) {
    let _ = writeln!(s, "    IX rem = p;");
    for d in (0..kernel.out_rank).rev() {
        let _ = writeln!(s, "    const IX i{d} = rem % (IX)m.o[{d}]; rem /= (IX)m.o[{d}];");
    }
}

/// Declares the accumulators and runs the reduction loop with `q` from `q_start`
/// in steps of `q_step`, folding the inner values into them.
fn reduction_loop(s: &mut String, kernel: &Kernel, q_start: &str, q_step: &str) {
    for (k, r) in kernel.reductions.iter().enumerate() {
        let _ = writeln!(s, "    {} acc{k} = {};", ctype(r.dtype), identity_lit(r));
    }
    let rn: Vec<String> = (0..kernel.red_rank).map(|d| format!("(IX)m.r[{d}]")).collect();
    let _ = writeln!(s, "    const IX rn = {};", rn.join(" * "));
    let _ = writeln!(s, "    for (IX q = {q_start}; q < rn; q += {q_step}) {{");
    let _ = writeln!(s, "      IX rq = q;");
    for d in (0..kernel.red_rank).rev() {
        let i = kernel.out_rank + d;
        let _ = writeln!(s, "      const IX i{i} = rq % (IX)m.r[{d}]; rq /= (IX)m.r[{d}];");
    }
    values(s, &kernel.inner, &kernel.inputs, "v", "      ");
    for (k, r) in kernel.reductions.iter().enumerate() {
        let _ = writeln!(s, "      acc{k} = {};", combine(r.op, &format!("acc{k}"), &format!("v{}", r.value), r.dtype));
    }
    let _ = writeln!(s, "    }}");
}

/// True when the kernel also gets a block-per-output variant (see
/// [`block_reduction_source`]).
pub fn has_block_variant(kernel: &Kernel) -> bool {
    kernel.red_rank > 0 && !kernel.has_scatter()
}

/// The metadata struct and the opening of kernel `name` up to its launch sizes,
/// as locals of the variant's index type.
fn kernel_head(kernel: &Kernel, name: &str) -> String {
    let mut s = String::new();
    meta_struct(&mut s, kernel);
    let _ = writeln!(s, "extern \"C\" __global__ void {name}({}) {{", params_list(kernel));
    let _ = writeln!(s, "  (void)m;");
    index_params(&mut s, kernel);
    s
}

/// The launch sizes as locals of the variant's index type.
fn index_params(s: &mut String, kernel: &Kernel) {
    let _ = writeln!(s, "  const IX n = (IX)n_arg;");
    if kernel.has_scatter() {
        let _ = writeln!(s, "  const IX row_len = (IX)row_len_arg;");
    }
}

fn params_list(kernel: &Kernel) -> String {
    let mut params: Vec<String> = vec!["const i64 n_arg".into()];
    if kernel.has_scatter() {
        params.push("const i64 row_len_arg".into());
    }
    for k in 0..kernel.inputs.len() {
        params.push(format!("const void* __restrict__ in{k}"));
    }
    for (k, o) in kernel.outputs.iter().enumerate() {
        params.push(format!("{}* __restrict__ out{k}", storage(o.dtype)));
    }
    params.push(format!("const {} m", meta_name(kernel)));
    params.join(", ")
}

/// The lengths of the four arrays of a kernel's metadata parameter: `a` (integer
/// arguments), `o` (output shape), `r` (reduction shape), `p` (f64 parameters);
/// each at least 1 (C has no empty arrays).
pub fn meta_lens(kernel: &Kernel) -> [usize; 4] {
    [kernel.n_args, kernel.out_rank, kernel.red_rank, kernel.n_params].map(|n| n.max(1))
}

fn meta_name(kernel: &Kernel) -> String {
    let [a, o, r, p] = meta_lens(kernel);
    format!("jmeta_{a}_{o}_{r}_{p}")
}

/// The metadata struct, passed by value (the driver copies it into the launch's
/// parameter space: no device allocation or copy per launch). Guarded so that many
/// kernels can share a translation unit.
fn meta_struct(s: &mut String, kernel: &Kernel) {
    let [a, o, r, p] = meta_lens(kernel);
    let name = meta_name(kernel);
    let guard = name.to_uppercase();
    let _ = writeln!(s, "#ifndef {guard}\n#define {guard}");
    let _ = writeln!(s, "struct {name} {{ i64 a[{a}]; i64 o[{o}]; i64 r[{r}]; double p[{p}]; }};");
    let _ = writeln!(s, "#endif");
}

/// The block-per-output variant of a reduction kernel, for large reduction domains:
/// one block per output position (grid-stride over positions), its threads stride
/// over the reduction domain, then the partial results are combined by warp
/// shuffles and shared memory, without atomics. Launch with a block size that is a
/// multiple of 32 (at most 1024).
pub fn block_reduction_source(kernel: &Kernel, name: &str) -> String {
    with_index_type(IndexWidth::Wide, block_kernel(kernel, name))
}

fn block_kernel(kernel: &Kernel, name: &str) -> String {
    let mut s = kernel_head(kernel, name);
    for (k, r) in kernel.reductions.iter().enumerate() {
        let _ = writeln!(s, "  __shared__ {} sm{k}[32];", ctype(r.dtype));
    }
    let _ = writeln!(s, "  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;");
    let _ = writeln!(s, "  for (IX p = (IX)blockIdx.x; p < n; p += (IX)gridDim.x) {{");
    out_indices(&mut s, kernel);
    reduction_loop(&mut s, kernel, "(IX)threadIdx.x", "(IX)blockDim.x");
    let shuffle = |s: &mut String, indent: &str| {
        for (k, r) in kernel.reductions.iter().enumerate() {
            let _ = writeln!(
                s,
                "{indent}for (int o = 16; o > 0; o >>= 1) {{ const {} other = __shfl_down_sync(0xffffffffu, acc{k}, o); acc{k} = {}; }}",
                ctype(r.dtype),
                combine(r.op, &format!("acc{k}"), "other", r.dtype)
            );
        }
    };
    shuffle(&mut s, "    ");
    for k in 0..kernel.reductions.len() {
        let _ = writeln!(s, "    if (lane == 0) sm{k}[warp] = acc{k};");
    }
    let _ = writeln!(s, "    __syncthreads();");
    let _ = writeln!(s, "    if (warp == 0) {{");
    for (k, r) in kernel.reductions.iter().enumerate() {
        let _ = writeln!(s, "      acc{k} = lane < nw ? sm{k}[lane] : {};", identity_lit(r));
    }
    shuffle(&mut s, "      ");
    let _ = writeln!(s, "      if (lane == 0) {{");
    values(&mut s, &kernel.body, &kernel.inputs, "b", "        ");
    for (k, o) in kernel.outputs.iter().enumerate() {
        let _ = writeln!(s, "        out{k}[p] = {};", store_expr(o.dtype, &format!("b{}", o.value)));
    }
    let _ = writeln!(s, "      }}");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    __syncthreads();");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

/// A whole translation unit: the prelude, the kernel named `name`, for reduction
/// kernels its block variant named `{name}_block`, for element-wise kernels with
/// 4-byte outputs its 16-byte variant `{name}_v4`, with 64-bit index arithmetic.
pub fn translation_unit(kernel: &Kernel, name: &str) -> String {
    translation_unit_with(kernel, name, IndexWidth::Wide)
}

/// [`translation_unit`] with the index arithmetic of `width` (the runtime compiles
/// the 32-bit module for launches where [`narrow_fits`] holds, the 64-bit one on
/// the first launch that needs it).
pub fn translation_unit_with(kernel: &Kernel, name: &str, width: IndexWidth) -> String {
    let mut tu = format!("{PRELUDE}\n{}", with_index_type(width, grid_kernel(kernel, name)));
    if has_block_variant(kernel) {
        tu.push_str(&with_index_type(width, block_kernel(kernel, &format!("{name}_block"))));
    }
    if has_vector_variant(kernel) {
        tu.push_str(&with_index_type(width, vector_kernel(kernel, &format!("{name}_v4"))));
    }
    tu
}

/// Whether `kernel` gets a 16-byte variant (`{name}_v4`): an element-wise kernel
/// (no reduction, no scatter) whose outputs are 4-byte values (f32, i32). Each
/// thread of it computes four consecutive positions along the last output
/// dimension and stores them with one 16-byte store; loads of 4-byte values whose
/// offset advances by exactly one along that dimension ([`vector_loads`]) are one
/// 16-byte load, the others are read lane by lane. [`vector_fits`] says whether a
/// launch may use it.
pub fn has_vector_variant(kernel: &Kernel) -> bool {
    kernel.red_rank == 0
        && kernel.out_rank > 0
        && !kernel.has_scatter()
        && kernel.outputs.iter().all(|o| matches!(o.dtype, DType::F32 | DType::I32))
}

/// The body values of `kernel` that its 16-byte variant reads as one vector: loads
/// of f32 or i32 without a guard, at offsets affine in the last output index with
/// coefficient 1.
pub fn vector_loads(kernel: &Kernel) -> Vec<bool> {
    let last = kernel.out_rank.saturating_sub(1);
    kernel
        .body
        .iter()
        .map(|v| match &v.inst {
            Inst::Load { input, offset, guard: None, .. } => {
                matches!(kernel.inputs[*input], DType::F32 | DType::I32) && offset.linear_coefficient(last) == Some(1)
            }
            _ => false,
        })
        .collect()
}

/// Whether `launch` may run the 16-byte variant: the last output dimension is a
/// multiple of 4 (four lanes never cross a row) and every vector load's offset at
/// a multiple of 4 along it is provably a multiple of 4 (16-byte aligned, device
/// blocks being 256-byte aligned).
pub fn vector_fits(kernel: &Kernel, launch: &crate::ir::Launch) -> bool {
    if !has_vector_variant(kernel) || launch.out_shape.last().is_none_or(|&d| d % 4 != 0) {
        return false;
    }
    let last = kernel.out_rank - 1;
    let zero_last: Vec<IndexExpr> =
        (0..kernel.out_rank).map(|k| if k == last { IndexExpr::c(0) } else { IndexExpr::idx(k) }).collect();
    vector_loads(kernel).iter().zip(&kernel.body).filter(|(v, _)| **v).all(|(_, v)| match &v.inst {
        Inst::Load { offset, .. } => multiple_of(&offset.bind_args(&launch.args).substitute(&zero_last), 4),
        _ => true,
    })
}

/// True when every value of `e` is provably a multiple of `m` (whatever its loop
/// indices).
fn multiple_of(e: &IndexExpr, m: i64) -> bool {
    use IndexExpr as E;
    match e {
        E::Const(c) => c % m == 0,
        E::Add(a, b) | E::Sub(a, b) | E::Min(a, b) | E::Max(a, b) => multiple_of(a, m) && multiple_of(b, m),
        E::Mul(a, b) => multiple_of(a, m) || multiple_of(b, m),
        E::Select(_, t, o) => multiple_of(t, m) && multiple_of(o, m),
        _ => false,
    }
}

/// The 16-byte variant of an element-wise kernel (see [`has_vector_variant`]),
/// with index type `IX`; `n` counts positions (a multiple of 4).
fn vector_kernel(kernel: &Kernel, name: &str) -> String {
    let mut s = kernel_head(kernel, name);
    let _ = writeln!(s, "  const IX n4 = n / 4;");
    let _ = writeln!(
        s,
        "  for (IX p4 = (IX)blockIdx.x * (IX)blockDim.x + (IX)threadIdx.x; p4 < n4; p4 += (IX)gridDim.x * (IX)blockDim.x) {{"
    );
    let _ = writeln!(s, "    const IX p = p4 * 4;");
    out_indices(&mut s, kernel);
    let last = kernel.out_rank - 1;
    let vec = vector_loads(kernel);
    for (k, v) in kernel.body.iter().enumerate() {
        if let (true, Inst::Load { input, offset, .. }) = (vec[k], &v.inst) {
            let ty = if kernel.inputs[*input] == DType::F32 { "float4" } else { "int4" };
            let st = storage(kernel.inputs[*input]);
            let _ = writeln!(s, "    const {ty} L{k} = *(const {ty}*)&((const {st}*)in{input})[{}];", iexpr(offset));
        }
    }
    for (k, o) in kernel.outputs.iter().enumerate() {
        let _ = writeln!(s, "    {} r{k}[4];", storage(o.dtype));
    }
    let _ = writeln!(s, "    const IX base = i{last};");
    for (lane, field) in ["x", "y", "z", "w"].into_iter().enumerate() {
        let _ = writeln!(s, "    {{");
        let _ = writeln!(s, "      const IX i{last} = base + {lane};");
        let lane_load = |k: usize| vec[k].then(|| format!("L{k}.{field}"));
        values_with(&mut s, &kernel.body, &kernel.inputs, "b", "      ", &lane_load);
        for (k, o) in kernel.outputs.iter().enumerate() {
            let _ = writeln!(s, "      r{k}[{lane}] = {};", store_expr(o.dtype, &format!("b{}", o.value)));
        }
        let _ = writeln!(s, "    }}");
    }
    for (k, o) in kernel.outputs.iter().enumerate() {
        let (ty, make) = if o.dtype == DType::F32 { ("float4", "make_float4") } else { ("int4", "make_int4") };
        let _ = writeln!(s, "    *({ty}*)&out{k}[p] = {make}(r{k}[0], r{k}[1], r{k}[2], r{k}[3]);");
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

/// The functions a kernel's module may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The grid-stride (or scatter-row) kernel; every kernel has it.
    Grid,
    /// The block-per-output reduction ([`has_block_variant`]).
    Block,
    /// The 16-byte element-wise variant ([`has_vector_variant`]).
    Vector,
}

/// The source of one variant of `kernel` named `name` with the index arithmetic of
/// `width` (the kernel must have that variant), without the prelude.
pub fn variant_source(kernel: &Kernel, name: &str, variant: Variant, width: IndexWidth) -> String {
    let body = match variant {
        Variant::Grid => grid_kernel(kernel, name),
        Variant::Block => block_kernel(kernel, name),
        Variant::Vector => vector_kernel(kernel, name),
    };
    with_index_type(width, body)
}

/// Positions and loop trip counts up to this run the 32-bit variants (room for the
/// grid-stride step past the end without overflow).
const NARROW_MAX_COUNT: usize = 1 << 30;

/// Whether `launch` of `kernel` may run the 32-bit-index variants: the output and
/// reduction domains have at most 2^30 positions, and every index expression of
/// the kernel, and each of its sub-expressions, stays within 32-bit integers over
/// the launch's index ranges with its arguments bound (interval arithmetic, so a
/// `true` is a proof; an expression it cannot bound answers `false`).
pub fn narrow_fits(kernel: &Kernel, launch: &crate::ir::Launch) -> bool {
    let (n, rn): (usize, usize) = (launch.out_shape.iter().product(), launch.red_shape.iter().product());
    if n > NARROW_MAX_COUNT || rn > NARROW_MAX_COUNT {
        return false;
    }
    let ranges: Vec<(i64, i64)> =
        launch.out_shape.iter().chain(&launch.red_shape).map(|&d| (0, (d as i64 - 1).max(0))).collect();
    let fits = |e: &IndexExpr| all_within_i32(&e.bind_args(&launch.args), &ranges);
    // the data-dependent part of an offset adds between 0 and `at.max_offset()`
    let indirect_fits = |offset: &IndexExpr, at: &Indirect| {
        fits(offset) && fits(&(offset.clone() + at.max_offset())) && fits(&at.extent)
    };
    let value_fits = |v: &Value| match &v.inst {
        Inst::Load { offset, guard, .. } => fits(offset) && guard.as_ref().is_none_or(fits),
        Inst::Gather { offset, at, guard, .. } => indirect_fits(offset, at) && guard.as_ref().is_none_or(fits),
        Inst::Index(ix) => fits(ix),
        Inst::Random { counter, .. } => fits(counter),
        _ => true,
    };
    kernel.body.iter().chain(&kernel.inner).all(value_fits)
        && kernel.outputs.iter().all(|o| match &o.store {
            Store::Dense => true,
            Store::Scatter { offset, guard, at: None, .. } => fits(offset) && fits(guard),
            Store::Scatter { offset, guard, at: Some(at), .. } => indirect_fits(offset, at) && fits(guard),
        })
}

/// True when `e` and every sub-expression of it provably lie within `i32` over
/// `ranges`.
fn all_within_i32(e: &IndexExpr, ranges: &[(i64, i64)]) -> bool {
    let within = e.bounds(ranges).is_some_and(|(lo, hi)| lo >= i64::from(i32::MIN) && hi <= i64::from(i32::MAX));
    within && e.operands().all(|x| all_within_i32(x, ranges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Launch, Output};
    use IndexExpr as E;

    /// A kernel that copies its input at `offset` over `shape`.
    fn gather(offset: E, shape: &[usize], args: Vec<i64>) -> (Kernel, Launch) {
        let body = vec![Value { inst: Inst::Load { input: 0, offset, guard: None, fill: 0.0 }, dtype: DType::F32 }];
        let kernel = Kernel {
            inputs: vec![DType::F32],
            out_rank: shape.len(),
            body,
            outputs: vec![Output { dtype: DType::F32, value: 0, store: Store::Dense }],
            n_args: args.len(),
            ..Kernel::default()
        };
        let launch = Launch {
            out_shape: shape.to_vec(),
            red_shape: vec![],
            args,
            params: vec![],
            output_lens: vec![shape.iter().product()],
        };
        (kernel, launch)
    }

    #[test]
    fn narrow_indices_only_where_every_value_fits() {
        // a transpose of [3000, 5000]: offsets below 15M
        let (k, l) = gather(E::idx(1) * E::Arg(0) + E::idx(0), &[3000, 5000], vec![3000]);
        assert!(narrow_fits(&k, &l));
        // the same sizes with a stride past 2^31 in an intermediate product
        let offset = E::idx(1) * E::Arg(0) - E::idx(1) * E::Arg(1) + E::idx(0);
        let (k, l) = gather(offset, &[3000, 5000], vec![1 << 20, 1 << 20]);
        assert!(!narrow_fits(&k, &l), "an intermediate product exceeds 32 bits");
        // more than 2^30 positions
        let (k, l) = gather(E::idx(0), &[1 << 31], vec![]);
        assert!(!narrow_fits(&k, &l));
        // an argument large enough to overflow on its own
        let (k, l) = gather(E::idx(0) + E::Arg(0), &[16], vec![1 << 40]);
        assert!(!narrow_fits(&k, &l));
    }

    #[test]
    fn both_index_widths_are_emitted() {
        let (k, _) = gather(E::idx(0).floor_div(3), &[16], vec![]);
        for (width, ty) in [(IndexWidth::Wide, "i64"), (IndexWidth::Narrow, "int")] {
            let tu = translation_unit_with(&k, "kernel", width);
            assert!(tu.contains("void kernel("));
            assert!(tu.contains(&format!("#define IX {ty}\n")), "{width:?}");
            assert_eq!(tu.matches("#define IX").count(), tu.matches("#undef IX").count());
        }
    }

    #[test]
    fn sixteen_byte_access_only_where_rows_and_offsets_are_aligned() {
        // a contiguous [6, 8] read: one vector load per four lanes
        let (k, l) = gather(E::idx(0) * E::Arg(0) + E::idx(1), &[6, 8], vec![8]);
        assert_eq!(vector_loads(&k), vec![true]);
        assert!(vector_fits(&k, &l));
        // rows of 12 starting 4 elements in: still aligned
        let (k, l) = gather(E::idx(0) * E::Arg(0) + E::idx(1) + 4, &[6, 8], vec![12]);
        assert!(vector_fits(&k, &l));
        // starting 2 elements in: not 16-byte aligned
        let (k, l) = gather(E::idx(0) * E::Arg(0) + E::idx(1) + 2, &[6, 8], vec![12]);
        assert!(!vector_fits(&k, &l));
        // a row stride that is not a multiple of 4
        let (k, l) = gather(E::idx(0) * E::Arg(0) + E::idx(1), &[6, 8], vec![10]);
        assert!(!vector_fits(&k, &l));
        // a last dimension of 6: four lanes would cross rows
        let (k, l) = gather(E::idx(0) * E::Arg(0) + E::idx(1), &[6, 6], vec![6]);
        assert!(!vector_fits(&k, &l));
        // a transposed read is gathered lane by lane: the variant still applies
        let (k, l) = gather(E::idx(1) * E::Arg(0) + E::idx(0), &[6, 8], vec![6]);
        assert_eq!(vector_loads(&k), vec![false]);
        assert!(vector_fits(&k, &l));
        assert!(translation_unit(&k, "kernel").contains("void kernel_v4("));
    }
}
