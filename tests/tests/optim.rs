//! Optimizers against plain-Rust transcriptions of PyTorch's update rules, learning
//! rate schedules against their closed forms, and state save/load.

use integration_tests::{assert_values_close, Nd, Rng};
use jit_core::{Backend, Flags};
use jit_nn::optim::{Adam, AdamW, CosineAnnealing, InverseDecay, LrScheduler, Optimizer, Sgd, StepLr};
use jit_ops::prelude::*;

const SHAPES: [&[usize]; 2] = [&[3, 5], &[7]];

fn params(rng: &mut Rng) -> (Vec<Nd>, Vec<Var>) {
    let nds: Vec<Nd> = SHAPES.iter().map(|s| rng.nd(s, -1.0, 1.0)).collect();
    let vars = nds.iter().map(|n| n.var(DType::F64).requires_grad_(true).unwrap()).collect();
    (nds, vars)
}

fn grads(rng: &mut Rng, steps: usize) -> Vec<Vec<Nd>> {
    (0..steps).map(|_| SHAPES.iter().map(|s| rng.nd(s, -1.0, 1.0)).collect()).collect()
}

/// PyTorch's SGD on one flat parameter.
fn sgd_ref(p: &mut [f64], buf: &mut Option<Vec<f64>>, g: &[f64], h: (f64, f64, f64, f64, bool)) {
    let (lr, momentum, dampening, wd, nesterov) = h;
    let mut d: Vec<f64> = g.iter().zip(p.iter()).map(|(g, p)| g + wd * p).collect();
    if momentum != 0.0 {
        let b = match buf.take() {
            None => d.clone(),
            Some(b) => b.iter().zip(&d).map(|(b, d)| momentum * b + (1.0 - dampening) * d).collect(),
        };
        d = if nesterov { d.iter().zip(&b).map(|(d, b)| d + momentum * b).collect() } else { b.clone() };
        *buf = Some(b);
    }
    for (p, d) in p.iter_mut().zip(&d) {
        *p -= lr * d;
    }
}

/// PyTorch's Adam / AdamW on one flat parameter at step t (from 1).
#[allow(clippy::too_many_arguments)]
fn adam_ref(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], t: i32, lr: f64, wd: f64, decoupled: bool) {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    for i in 0..p.len() {
        let mut g = g[i];
        if decoupled {
            p[i] *= 1.0 - lr * wd;
        } else {
            g += wd * p[i];
        }
        m[i] = b1 * m[i] + (1.0 - b1) * g;
        v[i] = b2 * v[i] + (1.0 - b2) * g * g;
        let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
        p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
    }
}

fn run_steps(opt: &mut dyn Optimizer, gs: &[Vec<Nd>]) {
    for step in gs {
        let g: Vec<Option<Var>> = step.iter().map(|g| Some(g.var(DType::F64))).collect();
        opt.step_with_grads(&g, &[]).unwrap();
    }
}

#[test]
fn sgd_variants_match_pytorch_updates() {
    let mut rng = Rng::fresh("sgd_variants_match_pytorch_updates");
    for h in [
        (0.1, 0.0, 0.0, 0.0, false),
        (0.05, 0.9, 0.0, 0.0, false),
        (0.05, 0.9, 0.1, 1e-2, false),
        (0.05, 0.9, 0.0, 1e-3, true),
    ] {
        let (nds, vars) = params(&mut rng);
        let gs = grads(&mut rng, 5);
        let mut opt = Sgd::new(vars.clone(), h.0)
            .unwrap()
            .with_momentum(h.1)
            .with_dampening(h.2)
            .with_weight_decay(h.3)
            .with_nesterov(h.4)
            .unwrap();
        run_steps(&mut opt, &gs);
        assert_eq!(opt.steps(), 5);
        for (k, nd) in nds.iter().enumerate() {
            let mut p = nd.data.clone();
            let mut buf = None;
            for step in &gs {
                sgd_ref(&mut p, &mut buf, &step[k].data, h);
            }
            assert_values_close(&vars[k].to_vec_f64().unwrap(), &p, 1e-12, 1e-14, &format!("sgd {h:?} param {k}"));
        }
    }
}

#[test]
fn adam_and_adamw_match_pytorch_updates() {
    let mut rng = Rng::fresh("adam_and_adamw_match_pytorch_updates");
    for (decoupled, wd) in [(false, 0.0), (false, 1e-2), (true, 1e-2)] {
        let (nds, vars) = params(&mut rng);
        let gs = grads(&mut rng, 6);
        let lr = 1e-2;
        let mut opt = if decoupled {
            AdamW::new(vars.clone(), lr).unwrap().with_weight_decay(wd)
        } else {
            Adam::new(vars.clone(), lr).unwrap().with_weight_decay(wd)
        };
        assert_eq!(opt.kind(), if decoupled { "adamw" } else { "adam" });
        run_steps(&mut opt, &gs);
        for (k, nd) in nds.iter().enumerate() {
            let mut p = nd.data.clone();
            let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
            for (t, step) in gs.iter().enumerate() {
                adam_ref(&mut p, &mut m, &mut v, &step[k].data, t as i32 + 1, lr, wd, decoupled);
            }
            let ctx = format!("adam decoupled={decoupled} wd={wd} param {k}");
            assert_values_close(&vars[k].to_vec_f64().unwrap(), &p, 1e-12, 1e-14, &ctx);
        }
    }
}

/// `step(loss)` (Jittor) equals backward + `step_accumulated` (PyTorch) equals
/// `step_with_grads(grad(loss))`, and skipping a parameter leaves it alone.
#[test]
fn the_three_ways_to_step_agree() {
    let mut rng = Rng::fresh("the_three_ways_to_step_agree");
    let x = rng.nd(&[4, 3], -1.0, 1.0).var(DType::F64);
    let init = rng.nd(&[3, 2], -1.0, 1.0);
    let run = |mode: usize| -> Vec<f64> {
        let w = init.var(DType::F64).requires_grad_(true).unwrap();
        let mut opt = Sgd::new(vec![w.clone()], 0.1).unwrap().with_momentum(0.9);
        for _ in 0..3 {
            let loss = matmul(&x, &w).unwrap().tanh().sum_all().unwrap();
            match mode {
                0 => opt.step(&loss).unwrap(),
                1 => {
                    opt.zero_grad();
                    jit_core::backward(&loss).unwrap();
                    opt.step_accumulated().unwrap();
                }
                _ => {
                    let g = jit_core::grad(&loss, std::slice::from_ref(&w)).unwrap();
                    opt.step_with_grads(&[Some(g[0].clone())], &[loss]).unwrap();
                }
            }
            assert!(w.grad().is_none() || mode == 1, "step(loss) clears accumulated gradients");
        }
        w.to_vec_f64().unwrap()
    };
    let a = run(0);
    assert_values_close(&run(1), &a, 1e-12, 1e-14, "backward + step_accumulated");
    assert_values_close(&run(2), &a, 1e-12, 1e-14, "step_with_grads");
    assert_ne!(a, init.data);

    let w = init.var(DType::F64).requires_grad_(true).unwrap();
    let mut opt = Sgd::new(vec![w.clone()], 0.1).unwrap();
    opt.step_with_grads(&[None], &[]).unwrap();
    assert_eq!(w.to_vec_f64().unwrap(), init.data);
}

#[test]
fn schedules_follow_their_closed_forms() {
    let w = Var::ones(&[1], DType::F32).requires_grad_(true).unwrap();
    let mut opt = Sgd::new(vec![w], 0.1).unwrap();
    let s = LrScheduler::new(StepLr { step_size: 2, gamma: 0.5 }, &opt);
    let lrs: Vec<f64> = (0..5).map(|t| s.lr_at(t)).collect();
    assert_eq!(lrs, vec![0.1, 0.1, 0.05, 0.05, 0.025]);
    let c = LrScheduler::new(CosineAnnealing { t_max: 10, eta_min: 0.01 }, &opt);
    assert!((c.lr_at(0) - 0.1).abs() < 1e-15);
    assert!((c.lr_at(5) - 0.055).abs() < 1e-15);
    assert!((c.lr_at(10) - 0.01).abs() < 1e-15);
    let a = LrScheduler::new(InverseDecay { decay: 5e-5 }, &opt);
    assert!((a.lr_at(20_000) - 0.1 / 2.0).abs() < 1e-15);
    // apply sets the optimizer's rate for its next step
    let step = LrScheduler::new(StepLr { step_size: 1, gamma: 0.1 }, &opt);
    opt.set_steps(2);
    assert!((step.apply(&mut opt) - 0.001).abs() < 1e-15);
    assert!((opt.lr() - 0.001).abs() < 1e-15);
}

#[test]
fn optimizer_state_saves_and_resumes_exactly() {
    let mut rng = Rng::fresh("optimizer_state_saves_and_resumes_exactly");
    let dir = std::env::temp_dir().join(format!("jit-optim-{}", rng.seed));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("adam.safetensors");
    let (nds, vars) = params(&mut rng);
    let gs = grads(&mut rng, 5);
    let mut opt = Adam::new(vars.clone(), 1e-2).unwrap().with_weight_decay(1e-3);
    run_steps(&mut opt, &gs[..3]);
    opt.save(&path).unwrap();
    // a fresh optimizer over copies of the parameters, restored from the file
    let copies: Vec<Var> = vars.iter().map(|v| v.detach().requires_grad_(true).unwrap()).collect();
    let mut resumed = Adam::new(copies.clone(), 0.5).unwrap();
    resumed.load(&path).unwrap();
    assert_eq!(resumed.steps(), 3);
    assert_eq!(resumed.lr(), 1e-2);
    run_steps(&mut opt, &gs[3..]);
    run_steps(&mut resumed, &gs[3..]);
    for (a, b) in vars.iter().zip(&copies) {
        assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap(), "resumed run is bit-identical");
    }
    assert_ne!(vars[0].to_vec_f64().unwrap(), nds[0].data);

    // wrong kind, wrong parameter count, wrong shapes, missing and corrupt files
    let mut sgd = Sgd::new(copies.clone(), 0.1).unwrap();
    let e = sgd.load(&path).unwrap_err().to_string();
    assert!(e.ends_with("holds adam state, not sgd state"), "{e}");
    let mut fewer = Adam::new(copies[..1].to_vec(), 0.1).unwrap();
    let e = fewer.load(&path).unwrap_err().to_string();
    assert!(e.ends_with("holds state for 2 parameters but this optimizer has 1"), "{e}");
    let other: Vec<Var> =
        [&[5, 3][..], &[7]].iter().map(|s| Var::zeros(s, DType::F64).requires_grad_(true).unwrap()).collect();
    let e = Adam::new(other, 0.1).unwrap().load(&path).unwrap_err().to_string();
    assert!(e.contains("has shape [3, 5] but parameter 0 needs [5, 3]"), "{e}");
    let e = resumed.load(&dir.join("missing.safetensors")).unwrap_err().to_string();
    assert!(e.contains("missing.safetensors: cannot read"), "{e}");
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = resumed.load(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.safetensors: not a valid safetensors file"), "{e}");
    std::fs::write(&cut, b"garbage").unwrap();
    assert!(resumed.load(&cut).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_optimizer_use_gives_clear_errors() {
    let plain = Var::ones(&[2], DType::F32);
    let e = Sgd::new(vec![plain], 0.1).err().unwrap().to_string();
    assert_eq!(e, "Sgd::new: parameter 0 (shape [2], f32) must be a floating-point value with requires_grad_(true)");
    let w = Var::ones(&[2], DType::F32).requires_grad_(true).unwrap();
    let e = Sgd::new(vec![w.clone()], 0.1).unwrap().with_nesterov(true).err().unwrap().to_string();
    assert_eq!(e, "Sgd: Nesterov momentum requires a momentum and zero dampening");
    let e = Adam::new(vec![w.clone()], 0.1).unwrap().with_betas(1.0, 0.9).err().unwrap().to_string();
    assert_eq!(e, "Adam: betas must lie in [0, 1), got (1, 0.9)");
    let mut opt = Sgd::new(vec![w], 0.1).unwrap();
    let e = opt.step_with_grads(&[Some(Var::ones(&[3], DType::F32))], &[]).unwrap_err().to_string();
    assert_eq!(e, "step: parameter 0 has shape [2] but its gradient has shape [3]");
    let e = opt.step_with_grads(&[], &[]).unwrap_err().to_string();
    assert_eq!(e, "step: 0 gradients for 1 parameters");
}

/// Optimizer updates give the same numbers fused, unfused and on the reference
/// backend (f32).
#[test]
fn updates_agree_across_backends() {
    let mut rng = Rng::fresh("updates_agree_across_backends");
    let init = rng.nd(&[9, 13], -1.0, 1.0);
    let gs: Vec<Nd> = (0..4).map(|_| rng.nd(&[9, 13], -1.0, 1.0)).collect();
    let run = |f: Flags| {
        jit_core::with_flags(f, || {
            let w = init.var(DType::F32).requires_grad_(true).unwrap();
            let mut opt = AdamW::new(vec![w.clone()], 1e-2).unwrap();
            for g in &gs {
                opt.step_with_grads(&[Some(g.var(DType::F32))], &[]).unwrap();
            }
            w.to_vec_f64().unwrap()
        })
    };
    let want = run(Flags { backend: Backend::Reference, fusion: false, dump: false });
    for fusion in [true, false] {
        let got = run(Flags { backend: Backend::Cpu, fusion, dump: false });
        assert_values_close(&got, &want, 1e-5, 1e-6, &format!("cpu fusion={fusion}"));
    }
}
