//! Training converges: logistic regression (matching a plain-Rust gradient descent
//! step for step) and a small MLP on synthetic data, on the default backend (the
//! compiled CPU backend, or CUDA with `JIT_BACKEND=cuda`).

use integration_tests::Rng;
use jit_nn::optim::{Adam, Optimizer, Sgd};
use jit_ops::prelude::*;

/// Two Gaussian blobs in 2-d, labels 0 and 1.
fn blobs(rng: &mut Rng, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut x = Vec::with_capacity(2 * n);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as f64;
        let c = if label == 1.0 { [1.0, 0.5] } else { [-1.0, -0.5] };
        // Box-Muller normal noise
        for cd in c {
            let (u, v) = (rng.unit().max(1e-12), rng.unit());
            x.push(cd + 0.7 * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos());
        }
        y.push(label);
    }
    (x, y)
}

/// Mean binary cross-entropy with logits, in its stable form
/// `max(z, 0) - z y + log(1 + exp(-|z|))`.
fn bce_with_logits(z: &Var, y: &Var) -> Var {
    let soft = &(-&z.abs()).exp().try_add(1.0).unwrap().log() + &z.relu().unwrap();
    (&soft - &(z * y)).mean_all().unwrap()
}

/// The same training in plain Rust: full-batch gradient descent on the mean BCE.
fn logistic_reference(x: &[f64], y: &[f64], lr: f64, steps: usize) -> (f64, [f64; 3]) {
    let n = y.len();
    let (mut w0, mut w1, mut b) = (0.0, 0.0, 0.0);
    let loss = |w0: f64, w1: f64, b: f64| {
        (0..n)
            .map(|i| {
                let z = w0 * x[2 * i] + w1 * x[2 * i + 1] + b;
                z.max(0.0) - z * y[i] + (-z.abs()).exp().ln_1p()
            })
            .sum::<f64>()
            / n as f64
    };
    for _ in 0..steps {
        let (mut g0, mut g1, mut gb) = (0.0, 0.0, 0.0);
        for i in 0..n {
            let z = w0 * x[2 * i] + w1 * x[2 * i + 1] + b;
            let d = (1.0 / (1.0 + (-z).exp()) - y[i]) / n as f64;
            g0 += d * x[2 * i];
            g1 += d * x[2 * i + 1];
            gb += d;
        }
        w0 -= lr * g0;
        w1 -= lr * g1;
        b -= lr * gb;
    }
    (loss(w0, w1, b), [w0, w1, b])
}

#[test]
fn logistic_regression_matches_plain_gradient_descent() {
    let mut rng = Rng::fresh("logistic_regression_matches_plain_gradient_descent");
    let n = 256;
    let (xs, ys) = blobs(&mut rng, n);
    let x = Var::from_vec(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), &[n, 2]).unwrap();
    let y = Var::from_vec(ys.iter().map(|&v| v as f32).collect::<Vec<_>>(), &[n, 1]).unwrap();
    let w = Var::zeros(&[2, 1], DType::F32).requires_grad_(true).unwrap();
    let b = Var::zeros(&[1], DType::F32).requires_grad_(true).unwrap();
    let (lr, steps) = (0.5, 200);
    let mut opt = Sgd::new(vec![w.clone(), b.clone()], lr).unwrap();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..steps {
        let loss = bce_with_logits(&linear(&x, &w.transpose(0, 1).unwrap(), Some(&b)).unwrap(), &y);
        opt.step(&loss).unwrap();
        last = loss.item::<f32>().unwrap() as f64;
        first.get_or_insert(last);
    }
    let final_loss = bce_with_logits(&linear(&x, &w.transpose(0, 1).unwrap(), Some(&b)).unwrap(), &y);
    let got = final_loss.item::<f32>().unwrap() as f64;
    let (want, params) = logistic_reference(&xs, &ys, lr, steps);
    println!("logistic regression: loss {:.4} -> {got:.5} (plain Rust {want:.5})", first.unwrap());
    assert!((got - want).abs() < 1e-4, "final loss {got} vs plain gradient descent {want}");
    let wv = w.to_vec::<f32>().unwrap();
    assert!((wv[0] as f64 - params[0]).abs() < 1e-3 && (wv[1] as f64 - params[1]).abs() < 1e-3);
    assert!(got < 0.5 * first.unwrap() && last > got - 1e-3);
}

#[test]
fn mlp_fits_a_smooth_function() {
    let mut rng = Rng::fresh("mlp_fits_a_smooth_function");
    jit_core::manual_seed(rng.next_u64());
    let n = 200;
    let xs: Vec<f32> = (0..2 * n).map(|_| rng.uniform(-2.0, 2.0) as f32).collect();
    let ys: Vec<f32> = (0..n).map(|i| xs[2 * i].sin() * (0.5 * xs[2 * i + 1]).cos()).collect();
    let x = Var::from_vec(xs, &[n, 2]).unwrap();
    let y = Var::from_vec(ys, &[n, 1]).unwrap();
    let init = |shape: &[usize], fan_in: usize| {
        let w = (Var::randn(shape, DType::F32).unwrap() * (1.0 / (fan_in as f64).sqrt())).requires_grad_(true).unwrap();
        w.sync().unwrap();
        w
    };
    let (w1, b1) = (init(&[32, 2], 2), Var::zeros(&[32], DType::F32).requires_grad_(true).unwrap());
    let (w2, b2) = (init(&[32, 32], 32), Var::zeros(&[32], DType::F32).requires_grad_(true).unwrap());
    let (w3, b3) = (init(&[1, 32], 32), Var::zeros(&[1], DType::F32).requires_grad_(true).unwrap());
    let params = vec![w1.clone(), b1.clone(), w2.clone(), b2.clone(), w3.clone(), b3.clone()];
    let forward = || {
        let h = linear(&x, &w1, Some(&b1)).unwrap().tanh();
        let h = linear(&h, &w2, Some(&b2)).unwrap().tanh();
        let out = linear(&h, &w3, Some(&b3)).unwrap();
        let d = &out - &y;
        (&d * &d).mean_all().unwrap()
    };
    let mut opt = Adam::new(params, 1e-2).unwrap();
    let start = forward().item::<f32>().unwrap();
    for _ in 0..300 {
        let loss = forward();
        opt.step(&loss).unwrap();
    }
    let end = forward().item::<f32>().unwrap();
    println!("mlp: mse {start:.4} -> {end:.5}");
    assert!(end < 0.01, "the MLP should fit sin(x) cos(y/2) to mse < 0.01, got {end}");
    assert!(end < start / 10.0);
}
