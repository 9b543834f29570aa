//! Autograd behaviour: fusion of backward graphs, no_grad and detach, accumulation,
//! higher-order gradients, custom rules, and clear errors for bad use.

use integration_tests::workloads::instance_norm;
use integration_tests::{assert_values_close, Rng};
use jit_core::{grad, grad_with, no_grad, with_flags, Backend, Flags, GradOptions};
use jit_ops::prelude::*;
use std::sync::Arc;

fn param(rng: &mut Rng, shape: &[usize]) -> Var {
    let x = rng.nd(shape, -1.0, 1.0).var(DType::F32).requires_grad_(true).unwrap();
    x.sync().unwrap();
    x
}

fn flags(backend: Backend, fusion: bool) -> Flags {
    Flags { backend, fusion, dump: false }
}

/// The whole instance-norm backward (gradients of input, weight and bias, with the
/// forward statistics it needs recomputed) plans into at most 6 kernels, and fused,
/// unfused and reference results agree.
#[test]
fn instance_norm_backward_fuses_into_at_most_six_kernels() {
    let mut rng = Rng::fresh("instance_norm_backward_fuses_into_at_most_six_kernels");
    let x = param(&mut rng, &[2, 3, 7, 9]);
    let w = param(&mut rng, &[1, 3, 1, 1]);
    let b = param(&mut rng, &[1, 3, 1, 1]);
    let r = rng.nd(&[2, 3, 7, 9], -1.0, 1.0).var(DType::F32);
    let params = [x.clone(), w.clone(), b.clone()];
    let grads_under = |f: Flags| {
        with_flags(f, || {
            let loss = (&instance_norm(&x, &w, &b) * &r).sum_all().unwrap();
            let g = grad(&loss, &params).unwrap();
            let kernels = jit_core::planned_kernels(&g).unwrap().len();
            realize(&g).unwrap();
            (kernels, g.iter().map(|v| v.to_vec_f64().unwrap()).collect::<Vec<_>>())
        })
    };
    let (fused_kernels, fused) = grads_under(flags(Backend::Cpu, true));
    let (unfused_kernels, unfused) = grads_under(flags(Backend::Cpu, false));
    let (_, reference) = grads_under(flags(Backend::Reference, false));
    println!("instance norm backward: {fused_kernels} kernels fused, {unfused_kernels} unfused");
    assert!(fused_kernels <= 6, "instance norm backward planned {fused_kernels} kernels");
    assert!(unfused_kernels > 3 * fused_kernels);
    for (k, ((f, u), r)) in fused.iter().zip(&unfused).zip(&reference).enumerate() {
        assert_values_close(f, r, 1e-4, 1e-5, &format!("gradient {k}, fused vs reference"));
        assert_values_close(u, r, 1e-4, 1e-5, &format!("gradient {k}, unfused vs reference"));
    }
}

#[test]
fn no_grad_and_detach_stop_gradients() {
    let mut rng = Rng::fresh("no_grad_and_detach_stop_gradients");
    let x = param(&mut rng, &[5]);
    assert!(x.requires_grad() && x.is_leaf());
    let y = no_grad(|| x.exp());
    assert!(!y.requires_grad(), "built under no_grad");
    assert!(jit_core::is_grad_enabled(), "no_grad restores the setting");
    let d = x.exp().detach();
    assert!(!d.requires_grad() && d.is_leaf());
    // d/dx [x * stop(x)] = stop(x)
    let loss = (&x * &x.detach()).sum_all().unwrap();
    let g = grad(&loss, std::slice::from_ref(&x)).unwrap();
    assert_eq!(g[0].to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
    // guards nest
    {
        let _off = jit_core::GradMode::set(false);
        {
            let _on = jit_core::GradMode::set(true);
            assert!(x.exp().requires_grad());
        }
        assert!(!x.exp().requires_grad());
    }
    assert!(x.exp().requires_grad());
    // integer and comparison results carry no gradient
    assert!(!x.gt(0.0).unwrap().requires_grad());
    assert!(!x.argmax(0, false).unwrap().requires_grad());
}

#[test]
fn backward_accumulates_until_zero_grad() {
    let x = Var::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap().requires_grad_(true).unwrap();
    let w = Var::from_vec(vec![0.5f32], &[1]).unwrap().requires_grad_(true).unwrap();
    for step in 1..=3 {
        let loss = (&x * &x * &w).sum_all().unwrap();
        jit_core::backward(&loss).unwrap();
        assert!(loss.is_realized(), "backward computes the loss with the gradients");
        let s = step as f32;
        assert_eq!(x.grad().unwrap().to_vec::<f32>().unwrap(), vec![s, 2.0 * s, 3.0 * s]);
        assert_eq!(w.grad().unwrap().to_vec::<f32>().unwrap(), vec![14.0 * s]);
    }
    x.zero_grad();
    assert!(x.grad().is_none());
    assert!(w.grad().is_some());
    w.set_grad(None).unwrap();
    assert!(w.grad().is_none());
}

#[test]
fn higher_order_gradients_with_create_graph() {
    let x = Var::from_vec(vec![0.5f64, -1.0, 2.0], &[3]).unwrap().requires_grad_(true).unwrap();
    let y = x.pow(3.0).unwrap().sum_all().unwrap();
    let opts = GradOptions { seed: None, create_graph: true };
    let g = grad_with(&y, std::slice::from_ref(&x), opts.clone()).unwrap();
    assert!(g[0].requires_grad());
    let gg = grad(&g[0].sum_all().unwrap(), std::slice::from_ref(&x)).unwrap();
    assert_eq!(gg[0].to_vec::<f64>().unwrap(), vec![3.0, -6.0, 12.0]);
    // second derivative of the variance, whose first derivative is a custom rule
    let v = x.var(&[0], true, false).unwrap();
    let g = grad_with(&v, std::slice::from_ref(&x), opts).unwrap();
    let h = grad(&g[0].select_first(), std::slice::from_ref(&x)).unwrap();
    // d/dx_j [2 (x_0 - mean) / (n - 1)] = 2 (delta_0j - 1/n) / (n - 1)
    let want = [2.0 * (1.0 - 1.0 / 3.0) / 2.0, -2.0 / 3.0 / 2.0, -2.0 / 3.0 / 2.0];
    assert_values_close(&h[0].to_vec_f64().unwrap(), &want, 1e-12, 1e-12, "d2 var");
}

/// Second derivatives through `norm` (a custom rule that reads the norm it
/// computed): Hessian-vector products `d/dx <grad f(x), u>` by autograd against
/// central differences of the first gradient, for p = 2 and 3 over one dim and
/// over all of them (for p = 1 the first gradient, `sign(x)`, is constant).
#[test]
fn norm_has_second_derivatives() {
    let mut rng = Rng::fresh("norm_has_second_derivatives");
    let x0 = rng.nd(&[3, 4], 0.2, 1.0).data;
    let u = rng.nd(&[3, 4], -1.0, 1.0).data;
    for p in [2.0, 3.0] {
        for dims in [vec![1isize], vec![]] {
            // f(x) = sum_i w_i norm_p(x)_i with fixed weights
            let first = |x: &[f64], create_graph: bool| -> (Var, Var) {
                let x = Var::from_vec(x.to_vec(), &[3, 4]).unwrap().requires_grad_(true).unwrap();
                let y = x.norm(p, &dims, false).unwrap();
                let w = Var::from_vec((0..y.numel()).map(|i| 0.5 + i as f64).collect(), y.shape()).unwrap();
                let opts = GradOptions { seed: None, create_graph };
                let g = grad_with(&(&y * &w).sum_all().unwrap(), std::slice::from_ref(&x), opts).unwrap().remove(0);
                (x, g)
            };
            let (x, g) = first(&x0, true);
            let uv = Var::from_vec(u.clone(), &[3, 4]).unwrap();
            let hu = grad(&(&g * &uv).sum_all().unwrap(), std::slice::from_ref(&x)).unwrap()[0].to_vec_f64().unwrap();
            let eps = 1e-5;
            let at = |sign: f64| {
                let xs: Vec<f64> = x0.iter().zip(&u).map(|(a, b)| a + sign * eps * b).collect();
                first(&xs, false).1.to_vec_f64().unwrap()
            };
            let (plus, minus) = (at(1.0), at(-1.0));
            let want: Vec<f64> = plus.iter().zip(&minus).map(|(a, b)| (a - b) / (2.0 * eps)).collect();
            assert_values_close(&hu, &want, 1e-6, 1e-6, &format!("d2 norm_{p} over {dims:?}"));
        }
    }
}

trait SelectFirst {
    fn select_first(&self) -> Var;
}

impl SelectFirst for Var {
    fn select_first(&self) -> Var {
        self.narrow(0, 0, 1).unwrap().sum_all().unwrap()
    }
}

#[test]
fn custom_ops_use_their_own_rule() {
    // straight-through rounding: round forward, identity backward
    let x = Var::from_vec(vec![0.2f32, 1.7, -2.4], &[3]).unwrap().requires_grad_(true).unwrap();
    let backward: Arc<jit_core::BackwardFn> = Arc::new(|_saved, g| Ok(vec![Some(g.clone())]));
    let y =
        jit_core::custom_op("round_ste", std::slice::from_ref(&x), |xs| Ok((xs[0].round(), vec![])), backward).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 2.0, -2.0]);
    let g = grad(&(&y * 3.0).sum_all().unwrap(), std::slice::from_ref(&x)).unwrap();
    assert_eq!(g[0].to_vec::<f32>().unwrap(), vec![3.0; 3]);
    // a rule that returns the wrong number of gradients is reported, not trusted
    let bad: Arc<jit_core::BackwardFn> = Arc::new(|_saved, _g| Ok(vec![]));
    let y = jit_core::custom_op("bad_rule", std::slice::from_ref(&x), |xs| Ok((xs[0].exp(), vec![])), bad).unwrap();
    let e = grad(&y.sum_all().unwrap(), std::slice::from_ref(&x)).unwrap_err().to_string();
    assert!(e.contains("bad_rule") && e.contains("0 gradients for 1 inputs"), "{e}");
}

#[test]
fn long_chains_differentiate_without_recursion() {
    let x = Var::from_vec(vec![1.0f64], &[1]).unwrap().requires_grad_(true).unwrap();
    let mut y = x.clone();
    for _ in 0..5000 {
        y = &y * 1.0001;
    }
    let g = grad(&y.sum_all().unwrap(), std::slice::from_ref(&x)).unwrap();
    let want = 1.0001f64.powi(5000);
    assert!((g[0].item::<f64>().unwrap() - want).abs() < 1e-9 * want);
}

#[test]
fn bad_use_gives_clear_errors() {
    let x = Var::from_vec(vec![1.0f32, 2.0], &[2]).unwrap().requires_grad_(true).unwrap();
    let c = Var::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
    let err = |r: jit_core::Result<Vec<Var>>| r.expect_err("an error").to_string();

    // non-scalar output without a seed; a seed of the wrong shape
    let e = err(grad(&x.exp(), std::slice::from_ref(&x)));
    assert_eq!(e, "grad: the output has shape [2], not one element: reduce it to a scalar (sum, mean) or pass a seed of the same shape");
    let seed = Var::ones(&[3], DType::F32);
    let e = err(grad_with(&x.exp(), std::slice::from_ref(&x), GradOptions { seed: Some(seed), create_graph: false }));
    assert_eq!(e, "grad: the seed has shape [3] but the output has shape [2]");
    // a seed of the right shape works
    let seed = Var::from_vec(vec![1.0f32, -1.0], &[2]).unwrap();
    let g = grad_with(&(&x * 2.0), std::slice::from_ref(&x), GradOptions { seed: Some(seed), create_graph: false });
    assert_eq!(g.unwrap()[0].to_vec::<f32>().unwrap(), vec![2.0, -2.0]);

    // a parameter that does not require a gradient
    let e = err(grad(&x.sum_all().unwrap(), std::slice::from_ref(&c)));
    assert!(e.starts_with("grad: parameter 0 (shape [2], f32) does not require a gradient"), "{e}");
    // an output that depends on nothing that requires a gradient
    let e = err(grad(&c.sum_all().unwrap(), std::slice::from_ref(&x)));
    assert!(
        e.starts_with("grad: the output (shape [], f32) does not depend on any value that requires a gradient"),
        "{e}"
    );
    // a parameter the loss does not use gets zeros (documented)
    let unused = Var::from_vec(vec![5.0f32; 3], &[3]).unwrap().requires_grad_(true).unwrap();
    let g = grad(&x.sum_all().unwrap(), &[x.clone(), unused]).unwrap();
    assert_eq!(g[1].to_vec::<f32>().unwrap(), vec![0.0; 3]);

    // requires_grad_ on integers, and unmarking a computed value
    let i = Var::from_vec(vec![1i64, 2], &[2]).unwrap();
    let e = i.requires_grad_(true).unwrap_err().to_string();
    assert_eq!(e, "requires_grad_: only floating-point values can require gradients, got i64");
    let e = x.exp().requires_grad_(false).unwrap_err().to_string();
    assert!(e.contains("use detach()"), "{e}");
    // set_grad with a wrong shape
    let e = x.set_grad(Some(Var::ones(&[3], DType::F32))).unwrap_err().to_string();
    assert_eq!(e, "set_grad: a gradient of shape [3] (f32) does not fit a value of shape [2] (f32)");

    // a value that the rule needs, changed by assign after use
    let y = (&x * &x).sum_all().unwrap();
    x.assign(&Var::from_vec(vec![7.0f32, 8.0], &[2]).unwrap()).unwrap();
    assert_eq!(x.version(), 1);
    let e = err(grad(&y, std::slice::from_ref(&x)));
    assert!(e.contains("was changed by assign() after the op used it (version 0 then, 1 now)"), "{e}");
    // assign checks shapes
    let e = x.assign(&Var::ones(&[3], DType::F32)).unwrap_err().to_string();
    assert_eq!(e, "assign: cannot assign a value of shape [3] (f32) to one of shape [2] (f32)");
    // after assign the leaf still requires a gradient and sees the new data
    let g = grad(&(&x * &x).sum_all().unwrap(), std::slice::from_ref(&x)).unwrap();
    assert_eq!(g[0].to_vec::<f32>().unwrap(), vec![14.0, 16.0]);
}
