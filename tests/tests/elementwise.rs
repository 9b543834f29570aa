//! Element-wise ops: unary functions, broadcasting binary ops with promotion,
//! scalars, comparisons, where, cast — against hand-computed values and against an
//! independent plain-Rust computation on random inputs and awkward shapes.

use integration_tests::{assert_close, assert_values_close, atol, erf_ref, indices, tol, Nd, Rng};
use jit_ops::prelude::*;

#[test]
fn hand_computed_values() {
    let x = Var::from_vec(vec![-2.0f32, -0.5, 0.0, 0.5, 2.5], &[5]).unwrap();
    assert_eq!(x.abs().to_vec::<f32>().unwrap(), vec![2.0, 0.5, 0.0, 0.5, 2.5]);
    assert_eq!(x.floor().to_vec::<f32>().unwrap(), vec![-2.0, -1.0, 0.0, 0.0, 2.0]);
    // round half to even, like torch.round
    assert_eq!(x.round().to_vec::<f32>().unwrap(), vec![-2.0, -0.0, 0.0, 0.0, 2.0]);
    assert_eq!((-&x).to_vec::<f32>().unwrap(), vec![2.0, 0.5, -0.0, -0.5, -2.5]);
    let y = (&x * 2.0 + 1.0) / 4.0;
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![-0.75, 0.0, 0.25, 0.5, 1.5]);
    let s = Var::from_vec(vec![0.0f64], &[1]).unwrap().sigmoid();
    assert_eq!(s.item::<f64>().unwrap(), 0.5);
    let i = Var::from_vec(vec![-7i64, 7, -7, 7], &[4]).unwrap();
    let d = Var::from_vec(vec![2i64, -2, -2, 2], &[4]).unwrap();
    // integer floor division and remainder follow Python / torch.floor_divide / remainder
    assert_eq!(i.floor_divide(&d).unwrap().to_vec::<i64>().unwrap(), vec![-4, -4, 3, 3]);
    assert_eq!(i.remainder(&d).unwrap().to_vec::<i64>().unwrap(), vec![1, -1, -1, 1]);
    // true division of integers gives f32
    let q = i.try_div(&d).unwrap();
    assert_eq!(q.dtype(), DType::F32);
    assert_eq!(q.to_vec::<f32>().unwrap(), vec![-3.5, -3.5, 3.5, 3.5]);
    let fr = Var::from_vec(vec![-7.5f32, 7.5], &[2]).unwrap().remainder(2.0).unwrap();
    assert_eq!(fr.to_vec::<f32>().unwrap(), vec![0.5, 1.5]);
}

#[test]
fn unary_ops_match_f64_functions() {
    let mut rng = Rng::fresh("unary_ops_match_f64_functions");
    type F = fn(f64) -> f64;
    let cases: Vec<(&str, F, f64, f64)> = vec![
        ("exp", f64::exp, -10.0, 10.0),
        ("log", f64::ln, 1e-3, 100.0),
        ("sqrt", f64::sqrt, 0.0, 100.0),
        ("rsqrt", |v| 1.0 / v.sqrt(), 1e-2, 100.0),
        ("recip", |v| 1.0 / v, 0.1, 10.0),
        ("sin", f64::sin, -10.0, 10.0),
        ("cos", f64::cos, -10.0, 10.0),
        ("tanh", f64::tanh, -8.0, 8.0),
        ("sigmoid", |v| 1.0 / (1.0 + (-v).exp()), -20.0, 20.0),
        ("erf", erf_ref, -4.0, 4.0),
        ("abs", f64::abs, -5.0, 5.0),
        ("floor", f64::floor, -5.0, 5.0),
    ];
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for (name, f, lo, hi) in &cases {
            let shape = rng.shape(3, true);
            let x = rng.nd(&shape, *lo, *hi).rounded(dtype);
            let v = x.var(dtype);
            let y = match *name {
                "exp" => v.exp(),
                "log" => v.log(),
                "sqrt" => v.sqrt(),
                "rsqrt" => v.rsqrt(),
                "recip" => v.recip(),
                "sin" => v.sin(),
                "cos" => v.cos(),
                "tanh" => v.tanh(),
                "sigmoid" => v.sigmoid(),
                "erf" => v.erf(),
                "abs" => v.abs(),
                "floor" => v.floor(),
                _ => unreachable!(),
            };
            assert_eq!(y.dtype(), dtype);
            let want = x.map(f);
            assert_close(&y, &want, tol(dtype) * 2.0, atol(dtype), &format!("{name} {dtype} {shape:?}"));
        }
    }
}

fn broadcast_ref(a: &Nd, b: &Nd, f: impl Fn(f64, f64) -> f64) -> Nd {
    let n = a.shape.len().max(b.shape.len());
    let shape: Vec<usize> = (0..n)
        .map(|i| {
            let da = if i + a.shape.len() >= n { a.shape[i + a.shape.len() - n] } else { 1 };
            let db = if i + b.shape.len() >= n { b.shape[i + b.shape.len() - n] } else { 1 };
            if da == 1 {
                db
            } else {
                da
            }
        })
        .collect();
    Nd::from_fn(&shape, |i| f(a.at_broadcast(i), b.at_broadcast(i)))
}

/// A pair of shapes that broadcast: start from one shape, then for the other drop
/// leading dims and set some dims to 1.
fn broadcastable_pair(rng: &mut Rng) -> (Vec<usize>, Vec<usize>) {
    let full = rng.shape(4, true);
    let mut other: Vec<usize> = full[rng.below(full.len() + 1)..].to_vec();
    for d in other.iter_mut() {
        if rng.chance(0.4) {
            *d = 1;
        }
    }
    let mut full = full;
    for d in full.iter_mut() {
        if rng.chance(0.2) {
            *d = 1;
        }
    }
    // where `full` became 1 the other side decides; keep them compatible
    if rng.chance(0.5) {
        (full, other)
    } else {
        (other, full)
    }
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let mut rng = Rng::fresh("binary_ops_broadcast_like_numpy");
    for _ in 0..60 {
        let (sa, sb) = broadcastable_pair(&mut rng);
        let (a, b) = (rng.nd(&sa, -3.0, 3.0).rounded(DType::F32), rng.nd(&sb, 0.5, 3.0).rounded(DType::F32));
        let (va, vb) = (a.var(DType::F32), b.var(DType::F32));
        let ctx = format!("{sa:?} op {sb:?}");
        assert_close(&(&va + &vb), &broadcast_ref(&a, &b, |x, y| x + y), 1e-6, 0.0, &format!("add {ctx}"));
        assert_close(&(&va - &vb), &broadcast_ref(&a, &b, |x, y| x - y), 1e-6, 1e-7, &format!("sub {ctx}"));
        assert_close(&(&va * &vb), &broadcast_ref(&a, &b, |x, y| x * y), 1e-6, 0.0, &format!("mul {ctx}"));
        assert_close(&(&va / &vb), &broadcast_ref(&a, &b, |x, y| x / y), 1e-6, 0.0, &format!("div {ctx}"));
        assert_close(&va.pow(&vb).unwrap(), &broadcast_ref(&a, &b, |x, y| x.powf(y)), 1e-6, 0.0, &format!("pow {ctx}"));
        assert_close(&va.maximum(&vb).unwrap(), &broadcast_ref(&a, &b, f64::max), 0.0, 0.0, &format!("max {ctx}"));
        assert_close(&va.minimum(&vb).unwrap(), &broadcast_ref(&a, &b, f64::min), 0.0, 0.0, &format!("min {ctx}"));
        let lt = va.lt(&vb).unwrap();
        assert_eq!(lt.dtype(), DType::Bool);
        assert_close(&lt, &broadcast_ref(&a, &b, |x, y| f64::from(u8::from(x < y))), 0.0, 0.0, &format!("lt {ctx}"));
        let ge = va.ge(&vb).unwrap();
        assert_close(&ge, &broadcast_ref(&a, &b, |x, y| f64::from(u8::from(x >= y))), 0.0, 0.0, &format!("ge {ctx}"));
        let w = Var::where_(&lt, &va, &vb).unwrap();
        assert_close(&w, &broadcast_ref(&a, &b, |x, y| if x < y { x } else { y }), 0.0, 0.0, &format!("where {ctx}"));
    }
}

/// `pow` to the scalar powers PyTorch's kernels compute without a general `pow`
/// (2, 3, 0.5, -0.5, -1, -2): the values of `powf` on random inputs of both signs and
/// on zeros, infinities and NaN (where PyTorch's `sqrt` / `rsqrt` forms give NaN for
/// negative bases, as `powf` does), in f32 and f64, and the gradient.
#[test]
fn pow_to_special_scalar_powers_matches_powf() {
    let mut rng = Rng::fresh("pow_to_special_scalar_powers_matches_powf");
    let n = 1 + rng.below(300);
    let mut xs = rng.nd(&[n], -3.0, 3.0).rounded(DType::F32).data;
    xs.extend([0.0, f64::INFINITY, f64::NAN, 1e-30, 1e30, 7.0]);
    let len = xs.len();
    for dt in [DType::F32, DType::F64] {
        let x = Nd { shape: vec![len], data: xs.clone() }.var(dt);
        for e in [2.0, 3.0, 0.5, -0.5, -1.0, -2.0] {
            let want: Vec<f64> = xs.iter().map(|&v| (v.powf(e) as f32) as f64).collect();
            let want = if dt == DType::F64 { xs.iter().map(|&v| v.powf(e)).collect() } else { want };
            let got = x.pow(e).unwrap().to_vec_f64().unwrap();
            // within two roundings (x * x * x and 1 / (x * x) round twice; f32 also
            // overflows or underflows to what f32 powf gives)
            let rtol = if dt == DType::F32 { 2.5e-7 } else { 4.5e-16 };
            assert_values_close(&got, &want, rtol, 0.0, &format!("{dt} x^{e} (seed {})", rng.seed));
        }
        // an integer exponent takes the same path
        assert_close(
            &x.pow(2).unwrap(),
            &Nd { shape: vec![len], data: xs.iter().map(|v| v * v).collect() }.rounded(dt),
            0.0,
            0.0,
            "x^2 (int)",
        );
    }
    // gradient of x^-0.5: -0.5 x^-1.5
    let x = Var::from_vec(vec![4.0f32, 0.25], &[2]).unwrap().requires_grad_(true).unwrap();
    let g = jit_core::grad(&x.pow(-0.5).unwrap().sum_all().unwrap(), std::slice::from_ref(&x)).unwrap();
    assert_eq!(g[0].to_vec::<f32>().unwrap(), vec![-0.0625, -4.0]);
}

/// `x ^ y` for f32 tensors and scalars that take no special path: every pair of
/// special values (signed zeros, infinities, NaN, +-1, negative bases to integer,
/// odd and fractional powers, subnormals, overflow and underflow) and random pairs,
/// on the vector loop and on the scalar loop, fused and unfused, against f64 `powf`
/// rounded to f32: NaN where it is NaN, zeros and infinities with their signs, and
/// within one f32 rounding elsewhere.
#[test]
fn general_pow_matches_powf_on_special_and_random_values() {
    use jit_core::{with_flags, Backend, Flags};
    let mut rng = Rng::fresh("general_pow_matches_powf_on_special_and_random_values");
    let common = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0];
    let mut special_x = common.to_vec();
    special_x.extend([-3.0, 1e-3, -1e-3, 1e10, -1e10, 1e-40, -1e-40, 7.5, -7.5, 0.999, 1.001]);
    let mut special_y = common.to_vec();
    special_y.extend([-3.0, 2.5, -2.5, 1e-3, 1e10, -1e10, 127.0, -127.0, 16_777_216.0, 33.3, 0.1, -149.5]);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for &x in &special_x {
        for &y in &special_y {
            xs.push(x);
            ys.push(y);
        }
    }
    for _ in 0..400 {
        let x = rng.uniform(-20.0, 20.0) as f32;
        let y = if rng.chance(0.5) { rng.int(-12, 12) as f32 } else { rng.uniform(-6.0, 6.0) as f32 };
        xs.push(x);
        ys.push(y);
        // positive bases over the whole range, results near f32's limits
        xs.push(10f64.powf(rng.uniform(-30.0, 30.0)) as f32);
        ys.push(rng.uniform(-1.6, 1.6) as f32);
    }
    let powf = |x: f32, y: f32| f64::from((f64::from(x).powf(f64::from(y))) as f32);
    let check = |xs: &[f32], ys: &[f32], got: &[f64], what: &str| {
        for ((&x, &y), &g) in xs.iter().zip(ys).zip(got) {
            let w = powf(x, y);
            let same = if w.is_nan() {
                g.is_nan()
            } else if w.is_infinite() || w == 0.0 {
                g == w && g.is_sign_negative() == w.is_sign_negative()
            } else {
                (g - w).abs() <= (w.abs() * 1.2e-7).max(1.5e-45)
            };
            assert!(same, "pow({x:e}, {y:e}) {what} (seed {}): got {g:e}, want {w:e}", rng.seed);
        }
    };
    for fusion in [true, false] {
        let f = Flags { backend: Backend::Cpu, fusion, dump: false };
        let run = |xs: &[f32], ys: &[f32]| {
            let x = Var::from_vec(xs.to_vec(), &[xs.len()]).unwrap();
            let y = Var::from_vec(ys.to_vec(), &[ys.len()]).unwrap();
            with_flags(f, || x.pow(&y).unwrap().to_vec_f64().unwrap())
        };
        check(&xs, &ys, &run(&xs, &ys), &format!("on the vector loop, fusion {fusion}"));
        for (cx, cy) in xs.chunks(3).zip(ys.chunks(3)).take(200) {
            check(cx, cy, &run(cx, cy), &format!("on the scalar loop, fusion {fusion}"));
        }
        // a scalar exponent (a launch parameter) and a scalar base
        for e in [2.5f32, -1.5, 7.0, 1e-3] {
            let x = Var::from_vec(xs.clone(), &[xs.len()]).unwrap();
            let got = with_flags(f, || x.pow(f64::from(e)).unwrap().to_vec_f64().unwrap());
            check(&xs, &vec![e; xs.len()], &got, &format!("to the scalar {e}, fusion {fusion}"));
        }
    }
}

#[test]
fn scalars_and_type_promotion() {
    let i = Var::from_vec(vec![1i32, 2, 3], &[3]).unwrap();
    assert_eq!((&i * 2).dtype(), DType::I32, "int tensor * int scalar stays i32");
    assert_eq!((&i * 0.5).dtype(), DType::F32, "int tensor * float scalar is f32");
    assert_eq!((&i * 0.5).to_vec::<f32>().unwrap(), vec![0.5, 1.0, 1.5]);
    let h = Var::from_vec(vec![f16::from_f32(1.5)], &[1]).unwrap();
    assert_eq!((&h * 2.0).dtype(), DType::F16, "f16 tensor * float scalar stays f16");
    let l = Var::from_vec(vec![10i64], &[1]).unwrap();
    assert_eq!(i.try_add(&l).unwrap().dtype(), DType::I64);
    let d = Var::from_vec(vec![0.25f64], &[1]).unwrap();
    let m = Var::from_vec(vec![1.0f32, 2.0], &[2]).unwrap().try_add(&d).unwrap();
    assert_eq!(m.dtype(), DType::F64);
    assert_eq!(m.to_vec::<f64>().unwrap(), vec![1.25, 2.25]);
    let b = Var::from_vec(vec![true, false, true], &[3]).unwrap();
    let bi = b.try_add(&b).unwrap();
    assert_eq!(bi.dtype(), DType::I64, "bool + bool computes in i64");
    assert_eq!(bi.to_vec::<i64>().unwrap(), vec![2, 0, 2]);
    // scalar on the left
    let r = 1.0 - Var::from_vec(vec![0.25f32], &[1]).unwrap();
    assert_eq!(r.to_vec::<f32>().unwrap(), vec![0.75]);
    let r = 3 / Var::from_vec(vec![2i64], &[1]).unwrap();
    assert_eq!(r.to_vec::<f32>().unwrap(), vec![1.5]);
    // logical ops read truth values of any dtype
    let f = Var::from_vec(vec![0.0f32, 2.0, 0.0], &[3]).unwrap();
    assert_eq!(f.logical_or(&b).unwrap().to_vec::<bool>().unwrap(), vec![true, true, true]);
    assert_eq!(f.logical_and(&b).unwrap().to_vec::<bool>().unwrap(), vec![false, false, false]);
    assert_eq!(f.logical_not().to_vec::<bool>().unwrap(), vec![true, false, true]);
    // unary float ops promote integers to f32
    assert_eq!(i.exp().dtype(), DType::F32);
}

#[test]
fn casts_follow_pytorch_rules() {
    let x = Var::from_vec(vec![-2.7f32, -0.5, 0.0, 0.5, 2.7, 300.0], &[6]).unwrap();
    assert_eq!(x.cast(DType::I32).to_vec::<i32>().unwrap(), vec![-2, 0, 0, 0, 2, 300]);
    assert_eq!(x.cast(DType::Bool).to_vec::<bool>().unwrap(), vec![true, true, false, true, true, true]);
    let i = Var::from_vec(vec![256i64, -1, 7], &[3]).unwrap();
    assert_eq!(i.cast(DType::U8).to_vec::<u8>().unwrap(), vec![0, 255, 7]);
    let big = Var::from_vec(vec![i64::MAX - 1], &[1]).unwrap();
    assert_eq!(big.cast(DType::I64).to_vec::<i64>().unwrap(), vec![i64::MAX - 1]);
    let h = Var::from_vec(vec![0.1f32], &[1]).unwrap().cast(DType::BF16).cast(DType::F32);
    assert_eq!(h.to_vec::<f32>().unwrap(), vec![bf16::from_f32(0.1).to_f32()]);
}

/// f32 -> f16 / bf16 rounds once to nearest, ties to even, on every backend and
/// both ways a kernel rounds (a cast inside a computation, and the store of a half
/// output), including values whose last mantissa bits lie just past a half-way
/// point (the reference once rounded those as ties) and random bit patterns.
#[test]
fn half_precision_casts_round_once_on_every_backend() {
    let mut rng = Rng::fresh("half_precision_casts_round_once_on_every_backend");
    let mut bits: Vec<u32> = vec![0xf530_8002, 0x3f80_8001, 0x3f80_8000, 0x3f81_8000, 0x7f7f_ffff, 0x0000_8001];
    bits.extend((0..4093).map(|_| rng.next_u64() as u32).filter(|b| (b >> 23) & 0xff != 0xff));
    let vals: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
    let x = Var::from_vec(vals.clone(), &[vals.len()]).unwrap();
    for (dt, want) in [
        (DType::BF16, vals.iter().map(|&v| bf16::from_f32(v).to_f32()).collect::<Vec<f32>>()),
        (DType::F16, vals.iter().map(|&v| f16::from_f32(v).to_f32()).collect::<Vec<f32>>()),
    ] {
        for backend in [jit_core::Backend::Cpu, jit_core::Backend::Interpreter, jit_core::Backend::Reference] {
            let flags = jit_core::Flags { backend, fusion: true, dump: false };
            jit_core::with_flags(flags, || {
                // a cast inside the kernel (x * 1 keeps it from being a plain copy)
                let inside = x.try_mul(1.0).unwrap().cast(dt).cast(DType::F32).to_vec::<f32>().unwrap();
                // a half-precision output, stored
                let stored = x.try_mul(1.0).unwrap().cast(dt).to_vec_f64().unwrap();
                for (i, w) in want.iter().enumerate() {
                    let ctx = format!("{dt} on {backend:?}, {:#010x} (seed {})", bits[i], rng.seed);
                    assert_eq!(inside[i].to_bits(), w.to_bits(), "cast inside: {ctx}");
                    assert_eq!(stored[i] as f32, *w, "stored: {ctx}");
                }
            });
        }
    }
}

/// Every f16 and bf16 bit pattern widens exactly when a kernel loads it, and f32
/// values at the edges of the half formats (infinities, NaN with sign and payload,
/// overflow thresholds, ties, half subnormals, signed zeros) round to the `half`
/// crate's bits when a kernel stores them — on the CPU backend fused (vector loops)
/// and unfused, the interpreter and the reference, at lengths that leave a scalar
/// remainder.
#[test]
fn half_loads_and_stores_are_exact_on_every_bit_pattern() {
    let mut rng = Rng::fresh("half_loads_and_stores_are_exact_on_every_bit_pattern");
    // a length that is not a multiple of the vector width, chosen fresh each run
    let n = 65536 - 1 - rng.below(3);
    let patterns: Vec<u16> = (0..n as u32).map(|b| b as u16).collect();
    let mut edges: Vec<f32> = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN, low payload
        f32::from_bits(0xffa0_2000), // negative NaN, payload in the kept bits
        65504.0,
        65519.996,
        65520.0,
        -65520.0,
        f32::MAX,
        bf16::MAX.to_f32(),
        f32::from_bits(0x7f7f_8000), // rounds to bf16 infinity
        6.097_555e-5,                // largest f16 subnormal
        6.103_515_6e-5,              // smallest f16 normal
        2.980_232_2e-8,              // half the smallest f16 subnormal: a tie to zero
        2.980_232_5e-8,              // just above it: the smallest subnormal
        8.940_697e-8,                // 1.5 subnormal steps: a tie to even (2)
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        1.000_488_3,  // 1 + 2^-11: f16 tie to even (1)
        1.001_464_8,  // 1 + 3 * 2^-11: f16 tie to even (1 + 2^-9)
        1.003_906_3,  // 1 + 2^-8: bf16 tie to even (1)
        -1.011_718_8, // -(1 + 3 * 2^-8): bf16 tie to even
    ];
    edges.extend((0..1000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    edges.extend((0..1000).map(|_| rng.uniform(-1e-4, 1e-4) as f32));
    let ne = edges.len();
    for backend in [jit_core::Backend::Cpu, jit_core::Backend::Interpreter, jit_core::Backend::Reference] {
        for fusion in [true, false] {
            let flags = jit_core::Flags { backend, fusion, dump: false };
            let ctx = format!("{backend:?}, fusion {fusion}, seed {}", rng.seed);
            jit_core::with_flags(flags, || {
                // loads: every pattern, widened (x * 1 keeps the kernel from being a copy)
                let h: Vec<f16> = patterns.iter().map(|&b| f16::from_bits(b)).collect();
                let got = Var::from_vec(h.clone(), &[n]).unwrap().cast(DType::F32).try_mul(1.0).unwrap();
                let got = got.to_vec::<f32>().unwrap();
                let bh: Vec<bf16> = patterns.iter().map(|&b| bf16::from_bits(b)).collect();
                let gotb = Var::from_vec(bh.clone(), &[n]).unwrap().cast(DType::F32).try_mul(1.0).unwrap();
                let gotb = gotb.to_vec::<f32>().unwrap();
                for i in 0..n {
                    for (w, g, what) in [(h[i].to_f32(), got[i], "f16"), (bh[i].to_f32(), gotb[i], "bf16")] {
                        let same = if w.is_nan() {
                            g.is_nan() && g.is_sign_negative() == w.is_sign_negative()
                        } else {
                            g.to_bits() == w.to_bits()
                        };
                        assert!(same, "{what} load of {:#06x}: {g:e}, want {w:e} ({ctx})", patterns[i]);
                    }
                }
                // stores: the edges, rounded once by the kernel's half output
                let x = Var::from_vec(edges.clone(), &[ne]).unwrap();
                let sh = x.try_mul(1.0).unwrap().cast(DType::F16).to_vec::<f16>().unwrap();
                let sb = x.try_mul(1.0).unwrap().cast(DType::BF16).to_vec::<bf16>().unwrap();
                for i in 0..ne {
                    // (a NaN comes out quiet either way, so x * 1 changes nothing)
                    let (wh, wb) = (f16::from_f32(edges[i]), bf16::from_f32(edges[i]));
                    let e = edges[i].to_bits();
                    assert_eq!(sh[i].to_bits(), wh.to_bits(), "f16 store of {e:#010x} ({ctx})");
                    assert_eq!(sb[i].to_bits(), wb.to_bits(), "bf16 store of {e:#010x} ({ctx})");
                }
            });
        }
    }
}

#[test]
fn integer_arithmetic_wraps_and_compares_exactly() {
    let mut rng = Rng::fresh("integer_arithmetic_wraps_and_compares_exactly");
    let shape = vec![rng.dim_size(false), rng.dim_size(false)];
    let a: Vec<i64> = (0..shape.iter().product::<usize>()).map(|_| rng.int(-1000, 1000)).collect();
    let b: Vec<i64> = a.iter().map(|_| rng.int(1, 50) * if rng.chance(0.5) { -1 } else { 1 }).collect();
    let va = Var::from_vec(a.clone(), &shape).unwrap();
    let vb = Var::from_vec(b.clone(), &shape).unwrap();
    let got = (&va * &vb + &va - 3).to_vec::<i64>().unwrap();
    let want: Vec<i64> = a.iter().zip(&b).map(|(x, y)| x * y + x - 3).collect();
    assert_eq!(got, want);
    let got = va.floor_divide(&vb).unwrap().to_vec::<i64>().unwrap();
    let want: Vec<i64> = a.iter().zip(&b).map(|(&x, &y)| (x as f64 / y as f64).floor() as i64).collect();
    assert_eq!(got, want);
    let got = va.remainder(&vb).unwrap().to_vec::<i64>().unwrap();
    let want: Vec<i64> = a.iter().zip(&b).map(|(&x, &y)| x - y * (x as f64 / y as f64).floor() as i64).collect();
    assert_eq!(got, want);
    let got = va.eq(&vb).unwrap().to_vec::<bool>().unwrap();
    assert_eq!(got, a.iter().zip(&b).map(|(x, y)| x == y).collect::<Vec<_>>());
    let i32s = Var::from_vec(vec![i32::MAX], &[1]).unwrap();
    assert_eq!((&i32s + 1).to_vec::<i32>().unwrap(), vec![i32::MIN], "i32 arithmetic wraps");
}

/// `isnan`, `isinf`, `isposinf`, `isneginf`, `isfinite` and `nan_to_num` against plain
/// Rust on random values with special ones mixed in, in every float dtype and on every
/// backend; integer inputs; the gradient of `nan_to_num`.
#[test]
fn special_value_tests_and_nan_to_num() {
    let mut rng = Rng::fresh("special_value_tests_and_nan_to_num");
    let n = 1 + rng.below(300);
    let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 1e300];
    let vals: Vec<f64> = (0..n)
        .map(|_| if rng.chance(0.3) { specials[rng.below(specials.len())] } else { rng.uniform(-5.0, 5.0) })
        .collect();
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let x = Var::from_vec(vals.clone(), &[n]).unwrap().cast(dt);
        let xs = x.to_vec_f64().unwrap(); // 1e300 is inf below f64
        let big = match dt {
            DType::F16 => 65504.0,
            DType::BF16 => bf16::MAX.to_f64(),
            DType::F32 => f32::MAX as f64,
            _ => f64::MAX,
        };
        for backend in [jit_core::Backend::Cpu, jit_core::Backend::Interpreter, jit_core::Backend::Reference] {
            let flags = jit_core::Flags { backend, fusion: true, dump: false };
            jit_core::with_flags(flags, || {
                let ctx = format!("{dt} on {backend:?} (seed {})", rng.seed);
                let check = |got: Var, f: fn(f64) -> bool, name: &str| {
                    let got = got.to_vec::<bool>().unwrap();
                    let want: Vec<bool> = xs.iter().map(|&v| f(v)).collect();
                    assert_eq!(got, want, "{name}: {ctx}");
                };
                check(x.isnan().unwrap(), f64::is_nan, "isnan");
                check(x.isinf().unwrap(), f64::is_infinite, "isinf");
                check(x.isposinf().unwrap(), |v| v == f64::INFINITY, "isposinf");
                check(x.isneginf().unwrap(), |v| v == f64::NEG_INFINITY, "isneginf");
                check(x.isfinite().unwrap(), f64::is_finite, "isfinite");
                let got = x.nan_to_num(0.5, None, Some(-7.0)).unwrap();
                assert_eq!(got.dtype(), dt);
                let want: Vec<f64> = xs
                    .iter()
                    .map(|&v| {
                        if v.is_nan() {
                            0.5
                        } else if v == f64::INFINITY {
                            big
                        } else if v == f64::NEG_INFINITY {
                            -7.0
                        } else {
                            v
                        }
                    })
                    .collect();
                assert_eq!(got.to_vec_f64().unwrap(), want, "nan_to_num: {ctx}");
            });
        }
    }
    // integers have no special values
    let i = Var::from_vec(vec![3i64, -1, 0], &[3]).unwrap();
    assert_eq!(i.isfinite().unwrap().to_vec::<bool>().unwrap(), [true; 3]);
    assert_eq!(i.isnan().unwrap().to_vec::<bool>().unwrap(), [false; 3]);
    assert_eq!(i.nan_to_num(0.0, None, None).unwrap().to_vec::<i64>().unwrap(), [3, -1, 0]);
    // the gradient passes where the input is finite
    let x = Var::from_vec(vec![1.0f32, f32::NAN, f32::INFINITY, -2.0], &[4]).unwrap().requires_grad_(true).unwrap();
    let g = jit_core::grad(
        &x.nan_to_num(0.0, None, None).unwrap().try_mul(3.0).unwrap().sum(&[], false).unwrap(),
        std::slice::from_ref(&x),
    )
    .unwrap();
    assert_eq!(g[0].to_vec::<f32>().unwrap(), [3.0, 0.0, 0.0, 3.0]);
}

#[test]
fn nan_propagates_through_max_and_min() {
    let a = Var::from_vec(vec![f32::NAN, 1.0, 2.0], &[3]).unwrap();
    let b = Var::from_vec(vec![0.0f32, f32::NAN, 1.0], &[3]).unwrap();
    let m = a.maximum(&b).unwrap().to_vec_f64().unwrap();
    assert!(m[0].is_nan() && m[1].is_nan() && m[2] == 2.0);
    let m = a.minimum(&b).unwrap().to_vec_f64().unwrap();
    assert!(m[0].is_nan() && m[1].is_nan() && m[2] == 1.0);
}

/// Max and min against scalars (`relu`'s zero is a kernel constant, other scalars
/// launch parameters, NaN included) on the vector loop (64 contiguous values) and
/// the scalar loop (3): NaN on either side gives NaN, otherwise the larger or
/// smaller value.
#[test]
fn max_and_min_against_scalars_propagate_nan_on_every_loop() {
    let mut xs: Vec<f32> = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 2.5, -1.0, 1e-40];
    xs.extend((0..56).map(|k| (k as f32 - 28.0) * 0.37));
    let expect = |x: f32, c: f64, max: bool| -> f64 {
        let (x, c) = (f64::from(x), f64::from(c as f32));
        if x.is_nan() || c.is_nan() {
            f64::NAN
        } else if max {
            x.max(c)
        } else {
            x.min(c)
        }
    };
    for scalar in [0.0, 2.5, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for max in [true, false] {
            for part in [&xs[..], &xs[5..8]] {
                let x = Var::from_vec(part.to_vec(), &[part.len()]).unwrap();
                let y = if max { x.maximum(scalar) } else { x.minimum(scalar) };
                // the scalar on the left as well
                let s = Var::full(&[part.len()], scalar, DType::F32);
                let z = if max { s.maximum(&x) } else { s.minimum(&x) };
                for v in [y.unwrap(), z.unwrap()] {
                    let got = v.to_vec_f64().unwrap();
                    for (k, (&g, &x)) in got.iter().zip(part).enumerate() {
                        let w = expect(x, scalar, max);
                        let ok = if w.is_nan() { g.is_nan() } else { g == w };
                        assert!(
                            ok,
                            "max {max} of {x:e} and {scalar:e} (element {k} of {}): {g:e}, want {w:e}",
                            part.len()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn where_broadcasts_condition_and_scalars() {
    let c = Var::from_vec(vec![true, false], &[2, 1]).unwrap();
    let x = Var::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
    let w = Var::where_(&c, &x, 0.0).unwrap();
    assert_eq!(w.shape(), &[2, 3]);
    assert_eq!(w.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
    let w = Var::where_(&c, 1, 2).unwrap();
    assert_eq!(w.to_vec::<i64>().unwrap(), vec![1, 2]);
    // integer condition is read as != 0
    let ci = Var::from_vec(vec![0i32, 5], &[2]).unwrap();
    let w = Var::where_(&ci, 1.5, -1.5).unwrap();
    assert_eq!(w.to_vec::<f32>().unwrap(), vec![-1.5, 1.5]);
}

#[test]
fn empty_and_scalar_shapes() {
    let e = Var::zeros(&[0, 3], DType::F32);
    let y = (&e * 2.0 + 1.0).exp();
    assert_eq!(y.shape(), &[0, 3]);
    assert!(y.to_vec::<f32>().unwrap().is_empty());
    let s = Var::scalar(2.0f32);
    let z = &s * Var::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
    assert_eq!(z.to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
    assert_eq!(indices(&[0, 2]).len(), 0);
    let mut rng = Rng::fresh("empty_and_scalar_shapes");
    let x = rng.nd(&[], -1.0, 1.0).rounded(DType::F64);
    assert_values_close(
        &x.var(DType::F64).tanh().to_vec_f64().unwrap(),
        &[x.data[0].tanh()],
        1e-15,
        0.0,
        "rank-0 tanh",
    );
}

/// Regression: the vectorised CPU path hoists splatted constants and parameters out of
/// its loops; when the kernel body started with one, every later constant took its
/// value (found by the backward differential test).
#[test]
fn kernels_with_several_scalar_parameters_keep_them_apart() {
    let mut rng = Rng::fresh("kernels_with_several_scalar_parameters_keep_them_apart");
    let x = rng.nd(&[5, 9], -1.0, 1.0);
    let xv = x.var(DType::F32);
    // the kernel body starts with the parameter 2.0; 0.3, 3.0 and 0.0 follow
    let y = &(2.0 * &xv) + &Var::where_(&xv.gt(0.3).unwrap(), 3.0f32, &xv).unwrap();
    let want = x.map(|v| 2.0 * v + if v > 0.3 { 3.0 } else { v });
    assert_close(&y, &want, 1e-6, 1e-6, "2x + where(x > 0.3, 3, x)");
}

/// `and`, `or` and `not` of f32 comparisons feeding `where` (the max-pool
/// gradient's "first tap that equals the maximum, or is NaN" test) run on the CPU
/// backend's vector loop as lane masks: fused, bit for bit against the reference
/// backend, on rows of vectors and remainders, with NaN, infinities and ties.
#[test]
fn logical_masks_in_where_agree_with_the_reference_backend() {
    use jit_core::{with_flags, Backend, Flags};
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    let cpu = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    let mut rng = Rng::fresh("logical_masks_in_where_agree_with_the_reference_backend");
    for w in [3usize, 4, 9, 37, 130] {
        let rows = 1 + rng.below(3);
        let mut a: Vec<f32> = (0..rows * w).map(|_| (rng.below(7) as f32 - 3.0) * 0.5).collect();
        let b: Vec<f32> = (0..rows * w).map(|_| (rng.below(7) as f32 - 3.0) * 0.5).collect();
        for k in (0..a.len()).step_by(5) {
            a[k] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0][k / 5 % 5];
        }
        let run = |flags| {
            with_flags(flags, || {
                let x = Var::from_vec(a.clone(), &[rows, w]).unwrap();
                let y = Var::from_vec(b.clone(), &[rows, w]).unwrap();
                let first = x.eq(&y).unwrap().logical_or(x.ne(&x).unwrap()).unwrap();
                let inside = x.gt(-1.0).unwrap().logical_and(x.le(&y).unwrap()).unwrap().logical_not();
                let either = first.logical_and(&inside).unwrap().logical_or(y.lt(0.0).unwrap()).unwrap();
                let t = Var::where_(&first, 1.5f32, &y).unwrap();
                let u = Var::where_(&inside, &t, &x).unwrap();
                let v = Var::where_(&either, &u, -2.0f32).unwrap();
                v.to_vec::<f32>().unwrap()
            })
        };
        let (got, want) = (run(cpu), run(reference));
        for (k, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == r.to_bits(),
                "width {w}, element {k} (x {}, y {}): cpu {g}, reference {r}",
                a[k],
                b[k]
            );
        }
    }
}

/// Element-wise kernels with a short body run four vectors per step on the CPU
/// backend, then single vectors, then scalars: the results are the IR executor's bit
/// for bit at every row length around those steps (a broadcast chain, a round trip
/// through f16, and a row gather).
#[test]
fn unrolled_vector_loops_match_the_executor_at_every_row_length() {
    let mut rng = Rng::fresh("unrolled_vector_loops_match_the_executor_at_every_row_length");
    for last in [1, 3, 4, 5, 15, 16, 17, 19, 20, 31, 32, 33, 35, 36, 67] {
        let x = rng.nd(&[3, last], -2.0, 2.0).rounded(DType::F32).var(DType::F32);
        let y = rng.nd(&[last], -2.0, 2.0).rounded(DType::F32).var(DType::F32);
        let table = rng.nd(&[5, last], -2.0, 2.0).rounded(DType::F32).var(DType::F32);
        let idx = Var::from_vec(vec![4i64, 0, 2, 4, 1], &[5]).unwrap();
        let run = |backend| {
            let flags = jit_core::Flags { backend, fusion: true, dump: false };
            jit_core::with_flags(flags, || {
                let chain = x.try_mul(&y).unwrap().try_add(0.25).unwrap().relu().unwrap();
                let half = x.try_mul(3.0).unwrap().cast(DType::F16).cast(DType::F32);
                let rows = table.index_select(0, &idx).unwrap().try_mul(2.0).unwrap();
                [chain, half, rows]
                    .iter()
                    .flat_map(|v| v.to_vec::<f32>().unwrap().into_iter().map(f32::to_bits))
                    .collect::<Vec<u32>>()
            })
        };
        let (cpu, exec) = (run(jit_core::Backend::Cpu), run(jit_core::Backend::Interpreter));
        assert_eq!(cpu, exec, "rows of {last} (seed {})", rng.seed);
    }
}
