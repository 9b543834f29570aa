//! The binary and divergence losses and `lerp` at the edges of their domains, on
//! every backend fused and unfused: probabilities of exactly 0 and 1 (PyTorch's
//! clamp of the logarithms at -100), logits far beyond f32's `exp` range, zero
//! targets of the KL divergence and their gradients, `lerp` at its end points; and
//! the errors for bad arguments. (Random values against finite differences are in
//! `gradients.rs`, parity with PyTorch in `heavy_ops_parity.rs`.)

use integration_tests::{assert_values_close, every_backend};
use jit_core::{grad, with_flags};
use jit_ops::prelude::*;

fn msg<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

fn f32s(v: &[f64], shape: &[usize]) -> Var {
    Var::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), shape).unwrap()
}

#[test]
fn binary_cross_entropy_clamps_its_logarithms_at_minus_100() {
    // p = 0 and 1 with both targets, a subnormal p, and ordinary values
    let p = [0.0, 0.0, 1.0, 1.0, 1e-40, 0.25, 0.9];
    let t = [0.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.2];
    let want: Vec<f64> = p
        .iter()
        .zip(&t)
        .map(|(&p, &t)| {
            let p = p as f32 as f64;
            let (lp, lq) = (p.ln().max(-100.0), (1.0 - p).ln().max(-100.0));
            -(t * lp + (1.0 - t) * lq)
        })
        .collect();
    for flags in every_backend() {
        with_flags(flags, || {
            let y = binary_cross_entropy(&f32s(&p, &[7]), &f32s(&t, &[7]), None, Reduction::None).unwrap();
            let got = y.to_vec_f64().unwrap();
            assert!(got.iter().all(|v| v.is_finite()), "{flags:?}: {got:?}");
            assert_values_close(&got, &want, 1e-6, 1e-6, &format!("{flags:?} bce"));
        });
    }
}

#[test]
fn binary_cross_entropy_with_logits_is_finite_for_every_score() {
    let x = [-200.0, -100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0, 200.0];
    let t = [1.0, 0.0, 0.7, 1.0, 0.5, 0.0, 0.3, 1.0, 0.0];
    let pw = 2.5;
    // (1 - t) x + (1 + (pw - 1) t) log(1 + exp(-x)), in f64
    let softplus = |z: f64| z.max(0.0) + (-z.abs()).exp().ln_1p();
    let want: Vec<f64> =
        x.iter().zip(&t).map(|(&x, &t)| (1.0 - t) * x + (1.0 + (pw - 1.0) * t) * softplus(-x)).collect();
    for flags in every_backend() {
        with_flags(flags, || {
            let pos = Var::from_vec(vec![pw as f32], &[1]).unwrap();
            let y =
                binary_cross_entropy_with_logits(&f32s(&x, &[9]), &f32s(&t, &[9]), None, Some(&pos), Reduction::None)
                    .unwrap();
            assert_values_close(&y.to_vec_f64().unwrap(), &want, 1e-6, 1e-6, &format!("{flags:?} bce with logits"));
        });
    }
}

#[test]
fn kl_div_zero_targets_add_nothing_and_take_no_gradient() {
    let logp = [-1.2, -0.3, -2.0, -0.7];
    let q: [f64; 4] = [0.0, 0.5, 0.0, 0.5];
    let want_sum: f64 = logp.iter().zip(&q).filter(|(_, &q)| q > 0.0).map(|(&l, &q)| q * (q.ln() - l)).sum();
    for flags in every_backend() {
        with_flags(flags, || {
            let x = f32s(&logp, &[2, 2]).requires_grad_(true).unwrap();
            let t = f32s(&q, &[2, 2]).requires_grad_(true).unwrap();
            let y = kl_div(&x, &t, KlReduction::BatchMean, false).unwrap();
            let g = grad(&y, &[x.clone(), t.clone()]).unwrap();
            let ctx = format!("{flags:?} kl_div");
            assert_values_close(&y.to_vec_f64().unwrap(), &[want_sum / 2.0], 1e-6, 0.0, &ctx);
            // d/dx = -t / batch, d/dt = (log t + 1 - x) / batch, both 0 where t = 0
            let dx: Vec<f64> = q.iter().map(|&q| -q / 2.0).collect();
            let dt: Vec<f64> =
                q.iter().zip(&logp).map(|(&q, &l)| if q > 0.0 { (q.ln() + 1.0 - l) / 2.0 } else { 0.0 }).collect();
            assert_values_close(&g[0].to_vec_f64().unwrap(), &dx, 1e-6, 1e-7, &ctx);
            assert_values_close(&g[1].to_vec_f64().unwrap(), &dt, 1e-6, 1e-7, &ctx);
        });
    }
}

#[test]
fn lerp_reaches_both_ends_exactly() {
    let a = [0.1, -3.7, 1e30, 5.0];
    let b = [0.7, 2.9, -1e30, 5.0];
    for flags in every_backend() {
        with_flags(flags, || {
            let (va, vb) = (f32s(&a, &[4]), f32s(&b, &[4]));
            assert_eq!(lerp(&va, &vb, 0.0).unwrap().to_vec::<f32>().unwrap(), va.to_vec::<f32>().unwrap());
            assert_eq!(lerp(&va, &vb, 1.0).unwrap().to_vec::<f32>().unwrap(), vb.to_vec::<f32>().unwrap());
            let w = f32s(&[0.0, 1.0, 1.0, 0.0], &[4]);
            let got = lerp(&va, &vb, w).unwrap().to_vec::<f32>().unwrap();
            assert_eq!(got, vec![0.1f32, 2.9, -1e30, 5.0], "{flags:?}");
        });
    }
}

#[test]
fn loss_arguments_are_checked() {
    let f = Var::zeros(&[2, 3], DType::F32);
    let g = Var::zeros(&[3, 2], DType::F32);
    let i = Var::zeros(&[2, 3], DType::I64);
    assert_eq!(
        msg(binary_cross_entropy(&f, &g, None, Reduction::Mean)),
        "binary_cross_entropy: input [2, 3] and target [3, 2] must have the same shape"
    );
    assert_eq!(
        msg(binary_cross_entropy(&f, &i, None, Reduction::Mean)),
        "binary_cross_entropy: target must be floating point, got i64 (cast it first)"
    );
    assert_eq!(
        msg(binary_cross_entropy(&f, &f, Some(&Var::zeros(&[4], DType::F32)), Reduction::Mean)),
        "binary_cross_entropy: shapes [4] and [2, 3] cannot be broadcast together (dim -1: 4 vs 3)"
    );
    assert_eq!(
        msg(binary_cross_entropy_with_logits(&f, &f, None, Some(&Var::zeros(&[2, 2, 3], DType::F32)), Reduction::Sum)),
        "binary_cross_entropy_with_logits: pos_weight [2, 2, 3] must broadcast to the input's shape [2, 3]"
    );
    assert_eq!(msg(huber_loss(&f, &f, 0.0, Reduction::Mean)), "huber_loss: delta must be positive and finite, got 0");
    assert_eq!(
        msg(kl_div(&i, &f, KlReduction::Sum, false)),
        "kl_div: input must be floating point, got i64 (cast it first)"
    );
    assert_eq!(
        msg(lerp(&f, &f.cast(DType::F64), 0.5)),
        "lerp: start and end must have the same dtype, got f32 and f64"
    );
    assert_eq!(
        msg(lerp(&f, &f, Var::zeros(&[3], DType::F64))),
        "lerp: weight must have the dtype of start and end (f32), got f64"
    );
}
