//! Activations and softmax against plain f64 formulas.

use integration_tests::{assert_close, atol, erf_ref, tol, Nd, Rng};
use jit_ops::prelude::*;

fn softmax_ref(x: &Nd, d: usize, log: bool) -> Nd {
    Nd::from_fn(&x.shape, |i| {
        let row = |k: usize| {
            let mut j = i.to_vec();
            j[d] = k;
            x.at(&j)
        };
        let n = x.shape[d];
        let m = (0..n).map(row).fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = (0..n).map(|k| (row(k) - m).exp()).sum();
        if log {
            x.at(i) - m - s.ln()
        } else {
            (x.at(i) - m).exp() / s
        }
    })
}

#[test]
fn activations_match_formulas() {
    let mut rng = Rng::fresh("activations_match_formulas");
    for dtype in [DType::F32, DType::F64, DType::F16] {
        for _ in 0..10 {
            let shape = rng.shape(3, true);
            let x = rng.nd(&shape, -6.0, 6.0).rounded(dtype);
            let v = x.var(dtype);
            let t = tol(dtype) * 4.0;
            let a = atol(dtype);
            // Composite ops round every intermediate to the dtype: in f16 the tail of
            // 1 + erf(x) cancels to 0, so compare composites with an absolute floor.
            let ca = if dtype == DType::F16 { 1e-2 } else { 1e-6 };
            let ctx = format!("{shape:?} {dtype}");
            assert_close(&v.relu().unwrap(), &x.map(|z| z.max(0.0)), 0.0, 0.0, &format!("relu {ctx}"));
            assert_close(
                &v.leaky_relu(0.1).unwrap(),
                &x.map(|z| if z > 0.0 { z } else { 0.1 * z }).rounded(dtype),
                t,
                a,
                &format!("leaky {ctx}"),
            );
            assert_close(
                &v.clamp(Some(-1.5), Some(2.0)).unwrap(),
                &x.map(|z| z.clamp(-1.5, 2.0)).rounded(dtype),
                0.0,
                0.0,
                &format!("clamp {ctx}"),
            );
            assert_close(
                &v.clamp(None, Some(0.0)).unwrap(),
                &x.map(|z| z.min(0.0)),
                0.0,
                0.0,
                &format!("clamp max {ctx}"),
            );
            let phi = |z: f64| 0.5 * (1.0 + erf_ref(z / std::f64::consts::SQRT_2));
            assert_close(&v.gelu().unwrap(), &x.map(|z| z * phi(z)), t * 4.0, ca, &format!("gelu {ctx}"));
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let gt = x.map(|z| 0.5 * z * (1.0 + (k * (z + 0.044715 * z * z * z)).tanh()));
            assert_close(&v.gelu_tanh().unwrap(), &gt, t * 4.0, ca, &format!("gelu_tanh {ctx}"));
            assert_close(&v.silu().unwrap(), &x.map(|z| z / (1.0 + (-z).exp())), t * 4.0, ca, &format!("silu {ctx}"));
            let softplus = |z: f64, beta: f64, threshold: f64| {
                if beta * z > threshold {
                    z
                } else {
                    (1.0 + (beta * z).exp()).ln() / beta
                }
            };
            let elu = x.map(|z| if z > 0.0 { z } else { 0.7 * (z.exp() - 1.0) });
            assert_close(&v.elu(0.7).unwrap(), &elu, t * 4.0, ca, &format!("elu {ctx}"));
            // beta 2, threshold 5: both branches are taken on [-6, 6]
            let sp = x.map(|z| softplus(z, 2.0, 5.0));
            assert_close(&v.softplus(2.0, 5.0).unwrap(), &sp, t * 4.0, ca, &format!("softplus {ctx}"));
            let hs = |z: f64| (z / 6.0 + 0.5).clamp(0.0, 1.0);
            // x / 6 + 1/2 cancels near x = -3: the absolute floor covers the
            // rounding of x / 6 (a seed failed at 9e-5 relative on a result of 1e-4)
            assert_close(&v.hardsigmoid().unwrap(), &x.map(hs), t * 4.0, ca, &format!("hardsigmoid {ctx}"));
            assert_close(&v.hardswish().unwrap(), &x.map(|z| z * hs(z)), t * 4.0, ca, &format!("hardswish {ctx}"));
            let mish = x.map(|z| z * softplus(z, 1.0, 20.0).tanh());
            assert_close(&v.mish().unwrap(), &mish, t * 4.0, ca, &format!("mish {ctx}"));
            if !shape.is_empty() {
                let d = rng.below(shape.len());
                let di = d as isize - if rng.chance(0.5) { shape.len() as isize } else { 0 };
                assert_close(
                    &v.softmax(di).unwrap(),
                    &softmax_ref(&x, d, false),
                    t * 4.0,
                    ca,
                    &format!("softmax dim {d} {ctx}"),
                );
                assert_close(
                    &v.log_softmax(di).unwrap(),
                    &softmax_ref(&x, d, true),
                    t * 4.0,
                    ca * 10.0,
                    &format!("log_softmax dim {d} {ctx}"),
                );
            }
        }
    }
}

#[test]
fn softmax_is_stable_for_large_inputs() {
    let x = Var::from_vec(vec![1000.0f32, 1001.0, 1002.0], &[1, 3]).unwrap();
    let s = x.softmax(-1).unwrap().to_vec::<f32>().unwrap();
    let e: Vec<f64> = [-2.0f64, -1.0, 0.0].iter().map(|v| v.exp()).collect();
    let t: f64 = e.iter().sum();
    for (g, w) in s.iter().zip(&e) {
        assert!((f64::from(*g) - w / t).abs() < 1e-6, "{s:?}");
    }
    let l = x.log_softmax(1).unwrap().to_vec::<f32>().unwrap();
    assert!(l.iter().all(|v| v.is_finite()));
    assert!((f64::from(l[2]) - (1.0 / t).ln()).abs() < 1e-5);
}

#[test]
fn nan_propagates_through_relu_and_clamp() {
    let x = Var::from_vec(vec![f32::NAN, -1.0], &[2]).unwrap();
    assert!(x.relu().unwrap().to_vec::<f32>().unwrap()[0].is_nan());
    assert!(x.clamp(Some(0.0), Some(1.0)).unwrap().to_vec::<f32>().unwrap()[0].is_nan());
    let ints = Var::from_vec(vec![-3i32, 4], &[2]).unwrap();
    assert_eq!(ints.relu().unwrap().to_vec::<i32>().unwrap(), vec![0, 4]);
}

#[test]
fn softplus_elu_and_mish_stay_finite_at_the_extremes() {
    let x = Var::from_vec(vec![-1000.0f32, -88.0, 0.0, 88.0, 1000.0, f32::NAN], &[6]).unwrap();
    let sp = x.softplus(1.0, f64::INFINITY).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(&sp[..5], &[0.0, (-88.0f32).exp(), std::f32::consts::LN_2, 88.0, 1000.0]);
    assert!(sp[5].is_nan());
    let e = x.elu(1.0).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(&e[..5], &[-1.0, -1.0, 0.0, 88.0, 1000.0]);
    assert!(e[5].is_nan());
    let m = x.mish().unwrap().to_vec::<f32>().unwrap();
    assert!(m[..5].iter().all(|v| v.is_finite()), "{m:?}");
    assert_eq!(m[4], 1000.0);
    let msg = x.softplus(0.0, 20.0).unwrap_err().to_string();
    assert_eq!(msg, "softplus: beta must be finite and non-zero, got 0");
    let i = Var::from_vec(vec![1i64, 2], &[2]).unwrap();
    assert!(i.mish().unwrap_err().to_string().starts_with("mish: needs a floating-point input, got i64"));
}
