//! Mixed precision: `autocast` and `GradScaler`.
//!
//! * Under autocast, products and convolutions run in f16 / bf16 on random options
//!   and awkward shapes and match the f32 operator on the rounded inputs, rounded;
//!   the full-precision operators take half inputs in f32; gradients reach f32
//!   parameters in f32.
//! * Parity with PyTorch: `tests/fixtures/amp.safetensors` (written by
//!   `scripts/make_amp_fixtures.py` with torch 2.15 on the CPU) holds
//!   `torch.autocast("cpu")` outputs of conv2d, linear, matmul and an MSE loss in
//!   bf16 and f16, and a `torch.amp.GradScaler` run of 7 SGD steps of which one overflows:
//!   the scales after every step and the final parameters must match.
//! * The scaler: identical steps to an unscaled optimizer when nothing overflows,
//!   skipped steps leave parameters, optimizer state and step count alone, growth and
//!   backoff, state round trip, and clear errors.
//! * A small convolutional network trained under autocast with the scaler lowers its
//!   loss, in f16 and in bf16.

use integration_tests::{fixture, Rng};
use jit_nn::amp::{autocast, autocast_off, GradScaler};
use jit_nn::layers::{Conv2d, Linear};
use jit_nn::optim::{Adam, Optimizer, Sgd};
use jit_nn::prelude::*;
use jit_nn::{Module, ModuleExt};
use std::collections::HashMap;

const HALVES: [DType; 2] = [DType::F16, DType::BF16];

/// Relative precision of a half type (one unit in the last place at 1).
fn eps(dt: DType) -> f64 {
    match dt {
        DType::F16 => 2f64.powi(-10),
        _ => 2f64.powi(-7),
    }
}

fn values(v: &Var) -> Vec<f64> {
    v.to_vec_f64().expect("values")
}

/// `|a - b| <= rtol |b| + atol max|b|` elementwise.
fn close(got: &[f64], want: &[f64], rtol: f64, atol: f64, ctx: &str) {
    assert_eq!(got.len(), want.len(), "{ctx}: lengths");
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rtol * w.abs() + atol * scale, "{ctx}: element {i}: got {g}, want {w}");
    }
}

fn randn(rng: &mut Rng, shape: &[usize]) -> Var {
    rng.nd(shape, -1.0, 1.0).var(DType::F32)
}

#[test]
fn products_and_convolutions_run_in_half_precision() {
    let mut rng = Rng::fresh("products_and_convolutions_run_in_half_precision");
    for round in 0..6 {
        let dt = HALVES[round % 2];
        let ctx = format!("round {round} ({dt}, seed {})", rng.seed);
        // conv2d with random options and odd sizes
        let groups = 1 + rng.below(2);
        let (c, o) = (groups * (1 + rng.below(3)), groups * (1 + rng.below(3)));
        let (k, stride, pad) = (1 + rng.below(3), 1 + rng.below(2), rng.below(2));
        let (h, w) = (k + rng.below(6), k + 1 + rng.below(5));
        let batch = 1 + rng.below(2);
        let x = randn(&mut rng, &[batch, c, h, w]);
        let wt = randn(&mut rng, &[o, c / groups, k, k]);
        let b = randn(&mut rng, &[o]);
        let opts = Conv2dOptions { stride: [stride, stride], padding: [pad, pad], groups, ..Default::default() };
        let y = autocast(dt, || conv2d(&x, &wt, Some(&b), &opts)).unwrap().unwrap();
        assert_eq!(y.dtype(), dt, "{ctx}: conv2d under autocast");
        let want = conv2d(
            &x.cast(dt).cast(DType::F32),
            &wt.cast(dt).cast(DType::F32),
            Some(&b.cast(dt).cast(DType::F32)),
            &opts,
        )
        .unwrap();
        // The product is rounded to the half type, then the bias is added and the sum
        // rounded again (as PyTorch's CUDA convolutions do: cuDNN's output, then the
        // bias), so an element may be off by half a unit of the product's magnitude
        // on top of its own rounding: 2 units at the tensor's largest value bound both.
        close(&values(&y), &values(&want), eps(dt), 2.0 * eps(dt), &format!("{ctx}: conv2d {opts:?}"));
        assert_eq!(conv2d(&x, &wt, Some(&b), &opts).unwrap().dtype(), DType::F32, "outside the scope");

        // matmul with a broadcast batch, and linear
        let (m, kk, n) = (1 + rng.below(9), 1 + rng.below(17), 1 + rng.below(9));
        let a = randn(&mut rng, &[3, m, kk]);
        let bm = randn(&mut rng, &[kk, n]);
        let y = autocast(dt, || matmul(&a, &bm)).unwrap().unwrap();
        assert_eq!(y.dtype(), dt, "{ctx}: matmul");
        let want = matmul(&a.cast(dt).cast(DType::F32), &bm.cast(dt).cast(DType::F32)).unwrap();
        close(&values(&y), &values(&want), eps(dt), 1e-5, &format!("{ctx}: matmul"));
        let lw = randn(&mut rng, &[n, kk]);
        let y = autocast(dt, || linear(&a, &lw, None)).unwrap().unwrap();
        assert_eq!(y.dtype(), dt, "{ctx}: linear");

        // conv_transpose2d
        let xt = randn(&mut rng, &[1, c, h, w]);
        let wtt = randn(&mut rng, &[c, o / groups, k, k]);
        let topts = ConvTranspose2dOptions { stride: [stride, stride], groups, ..Default::default() };
        let y = autocast(dt, || conv_transpose2d(&xt, &wtt, None, &topts)).unwrap().unwrap();
        assert_eq!(y.dtype(), dt, "{ctx}: conv_transpose2d");
        let want =
            conv_transpose2d(&xt.cast(dt).cast(DType::F32), &wtt.cast(dt).cast(DType::F32), None, &topts).unwrap();
        // the partial products of overlapping windows are rounded before their sum
        close(&values(&y), &values(&want), eps(dt), 2.0 * eps(dt), &format!("{ctx}: conv_transpose2d"));

        // f64 operands are never cast; autocast_off turns the scope off
        let y = autocast(dt, || matmul(&a.cast(DType::F64), &bm.cast(DType::F64))).unwrap().unwrap();
        assert_eq!(y.dtype(), DType::F64);
        let y = autocast(dt, || autocast_off(|| matmul(&a, &bm))).unwrap().unwrap();
        assert_eq!(y.dtype(), DType::F32);
    }
}

#[test]
fn full_precision_operators_take_half_inputs_in_f32() {
    let mut rng = Rng::fresh("full_precision_operators_take_half_inputs_in_f32");
    for dt in HALVES {
        let ctx = format!("{dt}, seed {}", rng.seed);
        let shape = [2, 3, 1 + rng.below(5), 2 + rng.below(5)];
        let x = (randn(&mut rng, &shape).try_mul(4.0).unwrap()).cast(dt);
        let t = randn(&mut rng, &shape);
        let x32 = x.cast(DType::F32);
        type Op = fn(&Var, &Var) -> Result<Var>;
        let ops: Vec<(&str, Op, DType)> = vec![
            ("softmax", |x, _| x.softmax(-1), DType::F32),
            ("log_softmax", |x, _| x.log_softmax(1), DType::F32),
            ("logsumexp", |x, _| x.logsumexp(&[2, 3], false), DType::F32),
            ("norm", |x, _| x.norm(2.0, &[-1], true), DType::F32),
            ("cosine_similarity", |x, t| cosine_similarity(x, t, 1, 1e-8), DType::F32),
            ("layer_norm", |x, _| layer_norm(x, &x.shape()[2..], None, None, 1e-5), DType::F32),
            ("group_norm", |x, _| group_norm(x, 3, None, None, 1e-5), DType::F32),
            ("mse_loss", |x, t| mse_loss(x, t, Reduction::Mean), DType::F32),
            ("l1_loss", |x, t| l1_loss(x, t, Reduction::Sum), DType::F32),
            ("smooth_l1_loss", |x, t| smooth_l1_loss(x, t, 0.5, Reduction::Mean), DType::F32),
            ("instance_norm", |x, _| instance_norm(x, None, None, None, true, 1e-5), DType::F16),
            ("batch_norm", |x, _| batch_norm(x, None, None, None, true, 1e-5), DType::F16),
        ];
        for (name, op, out) in ops {
            let want_dt = if out == DType::F16 { dt } else { DType::F32 };
            let y = autocast(dt, || op(&x, &t)).unwrap().unwrap();
            assert_eq!(y.dtype(), want_dt, "{ctx}: {name} under autocast");
            // the same operator on the f32 value of the input (rounded back for the
            // normalisations that keep the input's dtype)
            let want = op(&x32, &t).unwrap().cast(want_dt);
            close(&values(&y), &values(&want), 1e-6, 1e-6, &format!("{ctx}: {name}"));
            // outside the scope the half input stays half where the operator keeps dtypes
            if name == "softmax" {
                assert_eq!(op(&x, &t).unwrap().dtype(), dt);
            }
        }
        // cross entropy / nll on half scores
        let scores = randn(&mut rng, &[5, 4]).try_mul(8.0).unwrap().cast(dt);
        let target = Var::from_vec(vec![0i64, 3, 1, 2, 3], &[5]).unwrap();
        let y = autocast(dt, || cross_entropy(&scores, &target, 0.1, -100, Reduction::Mean)).unwrap().unwrap();
        assert_eq!(y.dtype(), DType::F32);
        let want = cross_entropy(&scores.cast(DType::F32), &target, 0.1, -100, Reduction::Mean).unwrap();
        close(&values(&y), &values(&want), 1e-6, 0.0, &format!("{ctx}: cross_entropy"));
    }
}

#[test]
fn gradients_reach_f32_parameters_in_f32() {
    let mut rng = Rng::fresh("gradients_reach_f32_parameters_in_f32");
    let conv = Conv2d::new(3, 6, 3, Conv2dOptions::new(1, 1), true).unwrap();
    let lin = Linear::new(6, 2, true).unwrap();
    let x = randn(&mut rng, &[2, 3, 7, 5]);
    let forward = || -> Result<Var> {
        // smooth (a ReLU would flip where f16 rounding moves a value across zero)
        let h = conv.forward(&x)?.tanh();
        let pooled = h.mean(&[2, 3], false)?;
        lin.forward(&pooled)?.sum(&[], false)
    };
    let params: Vec<Var> = conv.parameters().into_iter().chain(lin.parameters()).collect();
    let want = jit_core::grad(&forward().unwrap(), &params).unwrap();
    for dt in HALVES {
        let loss = autocast(dt, forward).unwrap().unwrap();
        assert_eq!(loss.dtype(), dt, "the last op is a half-precision linear, summed in its dtype");
        let got = jit_core::grad(&loss, &params).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.dtype(), DType::F32, "{dt}: gradient {i} of an f32 parameter");
            close(&values(g), &values(w), 0.0, 30.0 * eps(dt), &format!("{dt}: gradient {i} (seed {})", rng.seed));
        }
    }
}

fn load_fixture() -> HashMap<String, Var> {
    let (tensors, _) = jit_nn::safetensors_io::load(fixture("amp.safetensors")).expect("fixture file");
    tensors.into_iter().collect()
}

fn get<'a>(m: &'a HashMap<String, Var>, k: &str) -> &'a Var {
    m.get(k).unwrap_or_else(|| panic!("fixture has no {k}"))
}

#[test]
fn autocast_matches_pytorch() {
    let m = load_fixture();
    for (name, dt) in [("bf16", DType::BF16), ("f16", DType::F16)] {
        let conv = autocast(dt, || {
            let o = Conv2dOptions { stride: [2, 2], padding: [1, 1], ..Default::default() };
            conv2d(get(&m, "conv.x"), get(&m, "conv.w"), Some(get(&m, "conv.b")), &o)
        })
        .unwrap()
        .unwrap();
        let mm = autocast(dt, || matmul(get(&m, "mm.a"), get(&m, "mm.b"))).unwrap().unwrap();
        let lin = autocast(dt, || linear(get(&m, "mm.a"), get(&m, "lin.w"), Some(get(&m, "lin.b")))).unwrap().unwrap();
        let (s, t) = (get(&m, "sm.x").cast(dt), get(&m, "sm.t"));
        let mse = autocast(dt, || mse_loss(&s, t, Reduction::Mean)).unwrap().unwrap();
        for (case, got) in [("conv", conv), ("mm", mm), ("lin", lin), ("mse", mse)] {
            let want = get(&m, &format!("{name}.{case}.y"));
            assert_eq!(got.dtype(), want.dtype(), "{name} {case}: dtype");
            assert_eq!(got.shape(), want.shape(), "{name} {case}: shape");
            // Both sum products in f32 and round; the sums' order differs, so a result
            // may round to the neighbouring half value. PyTorch's CPU convolution adds
            // the bias before its one rounding, ours (like PyTorch's CUDA path) rounds
            // the product and then the sum: 2 units at the largest value bound that.
            let (rtol, atol) = match case {
                "mse" => (1e-5, 1e-6),
                "conv" => (eps(dt), 2.0 * eps(dt)),
                _ => (eps(dt), 1e-6),
            };
            close(&values(&got), &values(want), rtol, atol, &format!("{name} {case}"));
        }
    }
}

#[test]
fn grad_scaler_matches_pytorch() {
    let m = load_fixture();
    let lin = Linear::new(4, 3, true).unwrap();
    lin.weight.assign(get(&m, "gs.w0")).unwrap();
    lin.bias.as_ref().unwrap().assign(get(&m, "gs.b0")).unwrap();
    let mut opt = Sgd::new(lin.parameters(), 0.05).unwrap().with_momentum(0.9);
    let mut scaler = GradScaler::new()
        .with_init_scale(1024.0)
        .unwrap()
        .with_growth_factor(2.0)
        .unwrap()
        .with_backoff_factor(0.5)
        .unwrap()
        .with_growth_interval(2)
        .unwrap();
    let (xs, ts) = (get(&m, "gs.xs"), get(&m, "gs.ts"));
    let want_scales = values(get(&m, "gs.scales"));
    let mut skipped = Vec::new();
    for (t, want_scale) in want_scales.iter().enumerate() {
        let x = xs.narrow(0, t, 1).unwrap().reshape(&[5, 4]).unwrap();
        let target = ts.narrow(0, t, 1).unwrap().reshape(&[5, 3]).unwrap();
        let loss = mse_loss(&lin.forward(&x).unwrap(), &target, Reduction::Mean).unwrap();
        let step = scaler.step(&mut opt, &loss).unwrap();
        assert_eq!(step.next_scale, *want_scale, "scale after step {t}");
        assert_eq!(scaler.get_scale(), *want_scale);
        skipped.push(step.skipped);
    }
    assert_eq!(skipped, [false, false, false, true, false, false, false], "only the step with the infinity skips");
    assert_eq!(opt.steps(), 6, "a skipped step is not counted");
    close(&values(&lin.weight), &values(get(&m, "gs.w")), 1e-5, 1e-6, "weight after the run");
    close(&values(lin.bias.as_ref().unwrap()), &values(get(&m, "gs.b")), 1e-5, 1e-6, "bias after the run");
}

#[test]
fn grad_scaler_steps_equal_plain_steps_without_overflow() {
    let mut rng = Rng::fresh("grad_scaler_steps_equal_plain_steps_without_overflow");
    let a = Linear::new(5, 3, true).unwrap();
    let b = Linear::new(5, 3, true).unwrap();
    for (pa, pb) in a.parameters().iter().zip(b.parameters()) {
        pb.assign(pa).unwrap();
    }
    let mut opt_a = Adam::new(a.parameters(), 1e-2).unwrap();
    let mut opt_b = Adam::new(b.parameters(), 1e-2).unwrap();
    let mut scaler = GradScaler::new().with_growth_interval(2).unwrap();
    for step in 0..4 {
        let x = randn(&mut rng, &[6, 5]);
        let t = randn(&mut rng, &[6, 3]);
        let la = mse_loss(&a.forward(&x).unwrap(), &t, Reduction::Mean).unwrap();
        let lb = mse_loss(&b.forward(&x).unwrap(), &t, Reduction::Mean).unwrap();
        opt_a.step(&la).unwrap();
        let s = scaler.step(&mut opt_b, &lb).unwrap();
        assert!(!s.skipped);
        assert_eq!(la.item::<f32>().unwrap(), lb.item::<f32>().unwrap(), "step {step}: the loss is not scaled");
        for (pa, pb) in a.parameters().iter().zip(b.parameters()) {
            // scaling by a power of two and back is exact
            close(&values(&pb), &values(pa), 1e-6, 1e-7, &format!("step {step} (seed {})", rng.seed));
        }
    }
    assert_eq!(scaler.get_scale(), 65536.0 * 4.0, "grew twice in 4 clean steps with interval 2");
    // the PyTorch flow: backward on the scaled loss, then step on the accumulated gradients
    let x = randn(&mut rng, &[6, 5]);
    let t = randn(&mut rng, &[6, 3]);
    let la = mse_loss(&a.forward(&x).unwrap(), &t, Reduction::Mean).unwrap();
    opt_a.step(&la).unwrap();
    let lb = mse_loss(&b.forward(&x).unwrap(), &t, Reduction::Mean).unwrap();
    jit_core::backward(&scaler.scale(&lb).unwrap()).unwrap();
    assert!(!scaler.step_accumulated(&mut opt_b).unwrap().skipped);
    opt_b.zero_grad();
    for (pa, pb) in a.parameters().iter().zip(b.parameters()) {
        close(&values(&pb), &values(pa), 1e-6, 1e-7, "after step_accumulated");
    }
}

#[test]
fn skipped_steps_leave_parameters_state_and_count_alone() {
    let lin = Linear::new(3, 2, true).unwrap();
    let mut opt = Adam::new(lin.parameters(), 1e-2).unwrap();
    let mut scaler = GradScaler::new();
    let before: Vec<Vec<f64>> = lin.parameters().iter().map(values).collect();
    for bad in [f32::INFINITY, f32::NAN, 1e36] {
        // 1e36 is finite, but the scaled gradient (x 65536) overflows f32
        let x = Var::from_vec(vec![1.0f32, bad, 0.5, 0.25, 0.0, 1.0], &[2, 3]).unwrap();
        let loss = lin.forward(&x).unwrap().sum(&[], false).unwrap();
        let scale = scaler.get_scale();
        let s = scaler.step(&mut opt, &loss).unwrap();
        assert!(s.skipped, "input {bad}: skipped");
        assert_eq!((s.scale, s.next_scale), (scale, scale / 2.0), "input {bad}: backoff");
        let after: Vec<Vec<f64>> = lin.parameters().iter().map(values).collect();
        assert_eq!(after, before, "input {bad}: parameters unchanged");
        assert_eq!(opt.steps(), 0, "input {bad}: not counted");
        assert!(opt.state(0).is_empty(), "input {bad}: Adam's moments not created");
    }
    let x = Var::from_vec(vec![1.0f32, 2.0, 0.5, 0.25, 0.0, 1.0], &[2, 3]).unwrap();
    let loss = lin.forward(&x).unwrap().sum(&[], false).unwrap();
    assert!(!scaler.step(&mut opt, &loss).unwrap().skipped);
    assert_eq!(opt.steps(), 1);
    assert_eq!(opt.state(0).len(), 3, "exp_avg, exp_avg_sq and step");
    assert_ne!(lin.parameters().iter().map(values).collect::<Vec<_>>(), before);
}

#[test]
fn grad_scaler_state_options_and_errors() {
    let mut s = GradScaler::new().with_init_scale(8.0).unwrap().with_growth_interval(3).unwrap();
    let lin = Linear::new(2, 1, false).unwrap();
    let mut opt = Sgd::new(lin.parameters(), 0.1).unwrap();
    let x = Var::from_vec(vec![1.0f32, 2.0], &[1, 2]).unwrap();
    let loss = || lin.forward(&x).unwrap().sum(&[], false).unwrap();
    s.step(&mut opt, &loss()).unwrap();
    let saved = s.state_dict();
    let mut r = GradScaler::new();
    r.load_state_dict(&saved).unwrap();
    assert_eq!(r, s, "round trip");
    assert!(saved.contains(&("_growth_tracker".to_string(), 1.0)));
    // a bad state changes nothing
    let mut broken = saved.clone();
    broken.retain(|(k, _)| k != "scale");
    let e = r.load_state_dict(&broken).unwrap_err().to_string();
    assert!(e.contains("\"scale\""), "{e}");
    let mut broken = saved.clone();
    broken[4].1 = 1.5;
    let e = r.load_state_dict(&broken).unwrap_err().to_string();
    assert!(e.contains("_growth_tracker") && e.contains("1.5"), "{e}");
    assert_eq!(r, s);
    // builder checks
    for e in [
        GradScaler::new().with_init_scale(0.0).unwrap_err(),
        GradScaler::new().with_init_scale(f64::INFINITY).unwrap_err(),
        GradScaler::new().with_growth_factor(1.0).unwrap_err(),
        GradScaler::new().with_backoff_factor(1.0).unwrap_err(),
        GradScaler::new().with_growth_interval(0).unwrap_err(),
    ] {
        assert!(e.to_string().contains("GradScaler"), "{e}");
    }
    // half-precision parameters are refused, naming the parameter
    let h = Var::from_vec(vec![1.0f32, 2.0], &[2]).unwrap().cast(DType::F16).detach().requires_grad_(true).unwrap();
    let mut opt = Sgd::new(vec![h.clone()], 0.1).unwrap();
    let e = s.step(&mut opt, &h.sum(&[], false).unwrap()).unwrap_err().to_string();
    assert!(e.contains("parameter 0") && e.contains("f16") && e.contains("autocast"), "{e}");
    // disabled: a plain step
    let mut off = GradScaler::new().enabled(false);
    assert_eq!(off.get_scale(), 1.0);
    let mut opt = Sgd::new(lin.parameters(), 0.1).unwrap();
    let st = off.step(&mut opt, &loss()).unwrap();
    assert_eq!((st.skipped, st.scale), (false, 1.0));
    // autocast refuses a dtype that is not half precision
    let e = autocast(DType::F32, || ()).unwrap_err().to_string();
    assert!(e.contains("autocast") && e.contains("f32"), "{e}");
}

#[test]
fn mixed_precision_training_lowers_the_loss() {
    let mut rng = Rng::fresh("mixed_precision_training_lowers_the_loss");
    let x = randn(&mut rng, &[4, 3, 9, 9]);
    let target = randn(&mut rng, &[4, 2]);
    for dt in HALVES {
        let conv = Conv2d::new(3, 8, 3, Conv2dOptions::new(2, 1), true).unwrap();
        let head = Linear::new(8, 2, true).unwrap();
        let params: Vec<Var> = conv.parameters().into_iter().chain(head.parameters()).collect();
        let mut opt = Adam::new(params, 2e-2).unwrap();
        let mut scaler = GradScaler::new();
        let mut losses = Vec::new();
        for _ in 0..25 {
            let loss = autocast(dt, || -> Result<Var> {
                let h = conv.forward(&x)?.relu()?.mean(&[2, 3], false)?;
                mse_loss(&head.forward(&h)?, &target, Reduction::Mean)
            })
            .unwrap()
            .unwrap();
            assert_eq!(loss.dtype(), DType::F32);
            scaler.step(&mut opt, &loss).unwrap();
            losses.push(loss.item::<f32>().unwrap());
        }
        assert!(opt.params().iter().all(|p| p.dtype() == DType::F32), "master weights stay f32");
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(last < 0.5 * first, "{dt}: loss {first} -> {last} ({losses:?}, seed {})", rng.seed);
    }
}
