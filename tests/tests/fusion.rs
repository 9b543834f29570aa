//! Kernel counts of the fusion planner (asserted) and fused/unfused agreement on the
//! workloads the benchmarks use.

use integration_tests::workloads::{adain, chain, instance_norm};
use integration_tests::{assert_values_close, Rng};
use jit_core::{planned_kernels, with_flags, Backend, Flags};
use jit_ops::prelude::*;

const FUSED: Flags = Flags { backend: Backend::Cpu, fusion: true, dump: false };
const UNFUSED: Flags = Flags { backend: Backend::Cpu, fusion: false, dump: false };

fn kernels(f: Flags, build: impl Fn() -> Var) -> usize {
    with_flags(f, || planned_kernels(&[build()]).expect("plan").len())
}

#[test]
fn elementwise_chain_is_one_kernel() {
    let x = Var::ones(&[64, 33], DType::F32);
    x.sync().unwrap();
    assert_eq!(kernels(FUSED, || chain(&x)), 1);
    assert!(kernels(UNFUSED, || chain(&x)) >= 10);
}

/// Softmax on the host: the row max, exp(x - max) stored once, its row sum, and the
/// scaling (four kernels: the exp is computed once, not in the sum and again in
/// the output). For the GPU the exp is recomputed by both (three kernels).
#[test]
fn softmax_plans_its_exp_by_backend() {
    let x = Var::randn(&[31, 50], DType::F32).unwrap();
    x.sync().unwrap();
    let host = with_flags(FUSED, || planned_kernels(&[x.softmax(-1).unwrap()]).unwrap());
    assert_eq!(host.len(), 4, "softmax on the host:\n{}", host.join("\n"));
    assert_eq!(host.iter().filter(|k| k.contains(" exp ")).count(), 1, "one exp:\n{}", host.join("\n"));
    let gpu = Flags { backend: Backend::Cuda, ..FUSED };
    assert_eq!(kernels(gpu, || x.softmax(-1).unwrap()), 3, "softmax planned for the GPU");
}

#[test]
fn instance_norm_fuses_to_three_kernels() {
    let x = Var::randn(&[2, 3, 7, 5], DType::F32).unwrap();
    let w = Var::randn(&[1, 3, 1, 1], DType::F32).unwrap();
    let b = Var::randn(&[1, 3, 1, 1], DType::F32).unwrap();
    realize(&[x.clone(), w.clone(), b.clone()]).unwrap();
    let fused = kernels(FUSED, || instance_norm(&x, &w, &b));
    let unfused = kernels(UNFUSED, || instance_norm(&x, &w, &b));
    assert!(fused <= 3, "instance norm fused into {fused} kernels");
    assert!(unfused >= 8, "instance norm unfused is {unfused} kernels");
}

#[test]
fn adain_is_at_most_four_kernels() {
    let c = Var::randn(&[2, 4, 6, 5], DType::F32).unwrap();
    let s = Var::randn(&[2, 4, 6, 5], DType::F32).unwrap();
    realize(&[c.clone(), s.clone()]).unwrap();
    let n = kernels(FUSED, || adain(&c, &s));
    assert!(n <= 4, "AdaIN planned as {n} kernels");
    // style of another size: the statistics can no longer share kernels, still few
    let s2 = Var::randn(&[2, 4, 3, 9], DType::F32).unwrap();
    s2.sync().unwrap();
    let n2 = kernels(FUSED, || adain(&c, &s2));
    assert!(n2 <= 5, "AdaIN with a differently sized style planned as {n2} kernels");
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `mean` and `var` of the same features (as `calc_mean_std` writes them) share
/// their row sum: the repeated kernel becomes an alias of the first, so AdaIN's
/// statistics kernels hold one sum per tensor and one sum of squares per tensor.
#[test]
fn repeated_kernels_are_computed_once() {
    let c = Var::randn(&[2, 4, 6, 5], DType::F32).unwrap();
    let s = Var::randn(&[2, 4, 6, 5], DType::F32).unwrap();
    realize(&[c.clone(), s.clone()]).unwrap();
    let plan = with_flags(FUSED, || planned_kernels(&[adain(&c, &s)]).unwrap());
    let sums: usize = plan.iter().map(|k| k.matches("= sum v").count()).sum();
    assert_eq!(sums, 4, "AdaIN's statistics: two sums and two sums of squares\n{}", plan.join("\n"));
    // the aliased value is the same as the one computed twice (unfused plan)
    let m = || c.mean(&[2, 3], true).unwrap().try_add(c.var(&[2, 3], true, true).unwrap()).unwrap();
    let fused = with_flags(FUSED, || m().to_vec::<f32>().unwrap());
    let unfused = with_flags(UNFUSED, || m().to_vec::<f32>().unwrap());
    assert_values_close(&f64s(&fused), &f64s(&unfused), 1e-6, 1e-6, "mean + var");
}

/// A repeated value that is requested, or that a library call reads, still gets
/// its data (through an alias of the first computation).
#[test]
fn repeated_values_that_are_requested_or_fed_to_a_library_call_are_right() {
    let x = Var::randn(&[6, 5], DType::F32).unwrap();
    let w = Var::randn(&[5, 3], DType::F32).unwrap();
    realize(&[x.clone(), w.clone()]).unwrap();
    let (a, b) = with_flags(FUSED, || {
        let (a, b) = (x.sum(&[1], false).unwrap(), x.sum(&[1], false).unwrap());
        realize(&[a.clone(), b.clone()]).unwrap();
        (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap())
    });
    assert_eq!(a, b);
    let plan = with_flags(FUSED, || {
        planned_kernels(&[matmul(&x.exp(), &w).unwrap().try_add(matmul(&x.exp(), &w).unwrap()).unwrap()]).unwrap()
    });
    assert_eq!(plan.iter().filter(|k| k.contains(" exp ")).count(), 1, "exp computed once:\n{}", plan.join("\n"));
    let got = with_flags(FUSED, || {
        matmul(&x.exp(), &w).unwrap().try_add(matmul(&x.exp(), &w).unwrap()).unwrap().to_vec::<f32>().unwrap()
    });
    let want = with_flags(UNFUSED, || matmul(&x.exp(), &w).unwrap().try_mul(2.0).unwrap().to_vec::<f32>().unwrap());
    assert_values_close(&f64s(&got), &f64s(&want), 1e-5, 1e-5, "exp(x) w + exp(x) w");
}

#[test]
fn fused_and_unfused_agree_on_the_bench_workloads() {
    let mut rng = Rng::fresh("fused_and_unfused_agree_on_the_bench_workloads");
    manual_seed(rng.next_u64());
    let x = Var::randn(&[2, 3, 9, 7], DType::F32).unwrap();
    let s = Var::randn(&[2, 3, 9, 7], DType::F32).unwrap();
    let w = Var::randn(&[1, 3, 1, 1], DType::F32).unwrap();
    let b = Var::randn(&[1, 3, 1, 1], DType::F32).unwrap();
    realize(&[x.clone(), s.clone(), w.clone(), b.clone()]).unwrap();
    type Workload<'a> = (&'a str, Box<dyn Fn() -> Var + 'a>);
    let work: Vec<Workload> = vec![
        ("chain", Box::new(|| chain(&x))),
        ("softmax", Box::new(|| x.softmax(-1).unwrap())),
        ("instance norm", Box::new(|| instance_norm(&x, &w, &b))),
        ("adain", Box::new(|| adain(&x, &s))),
    ];
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    for (name, f) in &work {
        let want = with_flags(reference, || f().to_vec_f64().unwrap());
        for mode in [FUSED, UNFUSED] {
            let got = with_flags(mode, || f().to_vec_f64().unwrap());
            assert_values_close(&got, &want, 1e-5, 1e-5, &format!("{name} {mode:?}"));
        }
    }
}

#[test]
fn realised_values_are_not_recomputed() {
    let x = Var::randn(&[16], DType::F32).unwrap();
    let y = (&x * 2.0).exp();
    y.sync().unwrap();
    let z = &y + 1.0;
    // only the add runs: y is data now
    let plan = with_flags(FUSED, || planned_kernels(std::slice::from_ref(&z)).unwrap());
    assert_eq!(plan.len(), 1);
    assert!(!plan[0].contains("exp"), "{}", plan[0]);
}

#[test]
fn long_chains_are_split_at_the_kernel_cost_cap() {
    let x = Var::ones(&[8], DType::F32);
    x.sync().unwrap();
    let build = || {
        let mut y = x.clone();
        for _ in 0..1000 {
            y = y * 1.0001;
        }
        y
    };
    // each multiply costs at least one unit: 1000 of them cannot fit one kernel
    let n = kernels(FUSED, build);
    assert!((2..=20).contains(&n), "a 1000-op chain planned as {n} kernels");
    let v = with_flags(FUSED, || build().to_vec::<f32>().unwrap());
    assert!((f64::from(v[0]) - 1.0001f64.powi(1000)).abs() < 1e-3, "{v:?}");
}

#[test]
fn expensive_shared_producers_are_stored_once() {
    let x = Var::randn(&[64], DType::F32).unwrap();
    x.sync().unwrap();
    let build = || {
        // a producer of many transcendental ops, read by two consumers
        let mut p = x.clone();
        for _ in 0..8 {
            p = p.sin().exp();
        }
        (&p + 1.0) * (&p - 1.0)
    };
    let plans = with_flags(FUSED, || planned_kernels(&[build()]).unwrap());
    assert_eq!(plans.len(), 2, "producer stored, consumer reads it:\n{}", plans.join("\n"));
    // the cheap shared producer of softmax (exp(x - max)) is recomputed for the GPU
    let gpu = Flags { backend: Backend::Cuda, ..FUSED };
    assert_eq!(kernels(gpu, || x.softmax(0).unwrap()), 3);
    // on the host a transcendental read by two element-wise consumers stays in one
    // kernel (computed once there), while one also read by a reduction is stored
    let pair = || {
        let e = x.exp();
        &(&e + 1.0) * &(&e - 1.0)
    };
    assert_eq!(kernels(FUSED, pair), 1);
    let both = || {
        let e = x.sin();
        &e * &e.sum(&[0], true).unwrap()
    };
    assert_eq!(kernels(FUSED, both), 3);
    assert_eq!(kernels(gpu, both), 2);
}
