//! Accuracy of the compiled CPU backend's transcendental functions against f64 over
//! their useful ranges: within 1e-6 relative (or 1e-7 absolute near zeros).

use integration_tests::{assert_values_close, erf_ref};
use jit_core::{with_flags, Backend, Flags};
use jit_ops::prelude::*;

#[test]
fn transcendentals_are_accurate_in_f32() {
    let f = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    type F = fn(f64) -> f64;
    let cases: [(&str, F, f64, f64); 8] = [
        ("exp", f64::exp, -87.0, 88.0),
        ("log", f64::ln, 1e-30, 1e30),
        ("tanh", f64::tanh, -20.0, 20.0),
        ("erf", erf_ref, -6.0, 6.0),
        ("sin", f64::sin, -100.0, 100.0),
        ("cos", f64::cos, -100.0, 100.0),
        // up to and past the inline reduction's bound, 8192
        ("sin", f64::sin, -9000.0, 9000.0),
        ("cos", f64::cos, -9000.0, 9000.0),
    ];
    for (name, g, lo, hi) in cases {
        let n = 20_001;
        let xs: Vec<f32> = (0..n)
            .map(|k| {
                let t = k as f64 / (n - 1) as f64;
                let v = if name == "log" { (lo.ln() + t * (hi.ln() - lo.ln())).exp() } else { lo + t * (hi - lo) };
                v as f32
            })
            .collect();
        let want: Vec<f64> = xs.iter().map(|&x| g(f64::from(x))).collect();
        let x = Var::from_vec(xs, &[n]).unwrap();
        let got = with_flags(f, || {
            let y = match name {
                "exp" => x.exp(),
                "log" => x.log(),
                "tanh" => x.tanh(),
                "erf" => x.erf(),
                "sin" => x.sin(),
                _ => x.cos(),
            };
            y.to_vec_f64().unwrap()
        });
        assert_values_close(&got, &want, 1e-6, 1e-7, name);
    }
}

/// `exp` at its edges, on the vector loop (a contiguous length that is a multiple
/// of 4) and on the scalar loop (a length of 3): NaN stays NaN, infinities and
/// overflow give inf or 0, and results in the subnormal range round to the nearest
/// subnormal within one step.
#[test]
fn exp_keeps_nan_and_infinities_and_reaches_the_subnormals() {
    let f = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    let mut xs: Vec<f32> = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1e30, 1e30, 88.72, 88.73, 89.5, -0.0];
    xs.extend((0..60).map(|k| -87.0 - k as f32 * 0.3));
    while !xs.len().is_multiple_of(4) {
        xs.push(0.5);
    }
    let want: Vec<f64> = xs.iter().map(|&x| f64::from((f64::from(x).exp()) as f32)).collect();
    let check = |xs: &[f32], want: &[f64], what: &str| {
        let x = Var::from_vec(xs.to_vec(), &[xs.len()]).unwrap();
        let got = with_flags(f, || x.exp().to_vec_f64().unwrap());
        assert_values_close(&got, want, 2e-6, 1.5e-45, what);
    };
    check(&xs, &want, "vector loop");
    for (c, w) in xs.chunks(3).zip(want.chunks(3)) {
        check(c, w, "scalar loop");
    }
}

/// `log`, `tanh`, `erf`, `recip`, `rsqrt`, `sin` and `cos` at their edges, on the vector loop and
/// on the scalar loop, against the f64 functions rounded to f32: NaN stays NaN,
/// infinities and zeros (with their signs) come out as IEEE defines them, negative
/// inputs of `log` and `rsqrt` give NaN, and subnormal inputs are handled (`log` of a
/// subnormal is a normal number, not the result for the nearest normal one), and
/// `sin` and `cos` agree on both sides of their inline range's bound and beyond it,
/// and `erf` on both sides of its three ranges' bounds.
#[test]
fn inline_functions_keep_special_values_and_subnormals() {
    let f = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    let tiny = [1e-45f32, 3e-42, 1.1e-38, f32::MIN_POSITIVE, 2e-38];
    let mut xs: Vec<f32> =
        vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, -1.0, -1e-40, 1.0, 0.625, -0.625, 1e30];
    xs.extend(tiny);
    xs.extend(tiny.iter().map(|t| -t));
    xs.extend([0.999_999_9, 1.000_000_1, 3.9, 4.0, 4.1, 9.0, -9.0, 44.0, 89.0]);
    xs.extend([8191.9, 8192.0, -8192.0, 8192.001, 1e4, -3e5, 1e20, 0.3, -2.0]);
    // around log's reduction boundary sqrt(2) and its half, and erf's range bounds
    // 1 and 2.5 (in vectors that mix lanes of the polynomials and of the tail)
    for c in [std::f32::consts::SQRT_2, std::f32::consts::FRAC_1_SQRT_2, 2.5, -2.5, 1.75, -1.0] {
        xs.extend([f32::from_bits(c.to_bits() - 1), c, f32::from_bits(c.to_bits() + 1)]);
    }
    while !xs.len().is_multiple_of(4) {
        xs.push(0.5);
    }
    type F = fn(f64) -> f64;
    let cases: [(&str, F); 7] = [
        ("log", f64::ln),
        ("tanh", f64::tanh),
        // erf(-0) is -0 (C's erf; `erf_ref` is a series that returns +0 there)
        ("erf", |x| if x == 0.0 { x } else { erf_ref(x) }),
        ("recip", |x| 1.0 / x),
        ("rsqrt", |x| 1.0 / x.sqrt()),
        ("sin", f64::sin),
        ("cos", f64::cos),
    ];
    for (name, g) in cases {
        let want: Vec<f64> = xs.iter().map(|&x| f64::from(g(f64::from(x)) as f32)).collect();
        let run = |xs: &[f32]| {
            let x = Var::from_vec(xs.to_vec(), &[xs.len()]).unwrap();
            with_flags(f, || {
                match name {
                    "log" => x.log(),
                    "tanh" => x.tanh(),
                    "erf" => x.erf(),
                    "recip" => x.recip(),
                    "sin" => x.sin(),
                    "cos" => x.cos(),
                    _ => x.rsqrt(),
                }
                .to_vec_f64()
                .unwrap()
            })
        };
        let check = |got: &[f64], want: &[f64], xs: &[f32], what: &str| {
            for ((g, w), x) in got.iter().zip(want).zip(xs) {
                let same = if w.is_nan() {
                    g.is_nan()
                } else if w.is_infinite() || *w == 0.0 {
                    g == w && g.is_sign_negative() == w.is_sign_negative()
                } else if name == "sin" || name == "cos" {
                    // absolute near their zeros
                    (g - w).abs() <= 2e-7 * w.abs().max(0.5)
                } else {
                    (g - w).abs() <= 2e-7 * w.abs()
                };
                assert!(same, "{name}({x:e}) on the {what}: got {g:e}, want {w:e}");
            }
        };
        check(&run(&xs), &want, &xs, "vector loop");
        for (c, w) in xs.chunks(3).zip(want.chunks(3)) {
            check(&run(c), w, c, "scalar loop");
        }
    }
}
