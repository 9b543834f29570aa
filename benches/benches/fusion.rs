//! Fused against unfused on the CPU backend (Cranelift), with a hand-written rayon
//! loop as the near-limit anchor for the element-wise chain. Workloads and sizes
//! are those of the fusion issue; `JIT_BENCH_SCALE=small` shrinks them for a smoke
//! run. Results and the command that made them: `benches/RESULTS.md`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use integration_tests::workloads::{adain, chain, chain_scalar, instance_norm};
use jit_core::{with_flags, Backend, Flags};
use jit_ops::prelude::*;
use rayon::prelude::*;
use std::time::Duration;

const FUSED: Flags = Flags { backend: Backend::Cpu, fusion: true, dump: false };
const UNFUSED: Flags = Flags { backend: Backend::Cpu, fusion: false, dump: false };

fn small() -> bool {
    std::env::var("JIT_BENCH_SCALE").is_ok_and(|s| s == "small")
}

fn leaf(shape: &[usize]) -> Var {
    let x = Var::randn(shape, DType::F32).expect("randn");
    x.sync().expect("realise input");
    x
}

fn bench_pair(c: &mut Criterion, group: &str, elems: usize, build: &dyn Fn() -> Var) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(elems as u64));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (name, f) in [("fused", FUSED), ("unfused", UNFUSED)] {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| with_flags(f, || build().sync().expect("realise")))
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let s = small();
    let n = if s { 1 << 18 } else { 16 << 20 };
    let x = leaf(&[n]);
    {
        // the anchor must compute what the framework computes
        let probe = x.narrow(0, 0, 4096).expect("narrow");
        let ours = chain(&probe).to_vec::<f32>().expect("chain");
        let theirs: Vec<f32> = probe.to_vec::<f32>().expect("data").iter().map(|&v| chain_scalar(v)).collect();
        assert_eq!(ours, theirs, "hand-written anchor and fused kernel disagree");
    }
    bench_pair(c, "chain10_f32", n, &|| chain(&x));
    {
        let mut g = c.benchmark_group("chain10_f32");
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        let data = x.to_vec::<f32>().expect("data");
        g.bench_function(BenchmarkId::from_parameter("hand_rayon"), |b| {
            b.iter(|| {
                let out: Vec<f32> = data.par_iter().map(|&v| chain_scalar(v)).collect();
                criterion::black_box(out)
            })
        });
        g.finish();
    }
    drop(x);

    let (r, cdim) = if s { (256, 256) } else { (4096, 1024) };
    let x = leaf(&[r, cdim]);
    bench_pair(c, "softmax_f32", r * cdim, &|| x.softmax(-1).unwrap());
    drop(x);

    let shape = if s { [2, 8, 32, 32] } else { [8, 64, 128, 128] };
    let x = leaf(&shape);
    let w = leaf(&[1, shape[1], 1, 1]);
    let b = leaf(&[1, shape[1], 1, 1]);
    bench_pair(c, "instance_norm_f32", shape.iter().product(), &|| instance_norm(&x, &w, &b));
    drop((x, w, b));

    let shape = if s { [2, 16, 16, 16] } else { [8, 512, 32, 32] };
    let cv = leaf(&shape);
    let sv = leaf(&shape);
    bench_pair(c, "adain_f32", shape.iter().product(), &|| adain(&cv, &sv));
}

/// Cranelift compile time of each distinct kernel of the workloads above (fused).
fn compile_times(c: &mut Criterion) {
    let x = leaf(&[64, 33]);
    let x4 = leaf(&[2, 3, 8, 8]);
    let s4 = leaf(&[2, 3, 8, 8]);
    let w = leaf(&[1, 3, 1, 1]);
    let mut all = Vec::new();
    for v in [chain(&x), x.softmax(-1).unwrap(), instance_norm(&x4, &w, &w), adain(&x4, &s4)] {
        all.extend(with_flags(FUSED, || jit_core::planned_kernel_ir(&[v]).expect("plan")));
    }
    let mut g = c.benchmark_group("compile");
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    g.bench_function(BenchmarkId::new("cranelift_per_kernel", format!("{}_kernels", all.len())), |b| {
        let mut k = 0;
        b.iter(|| {
            let kernel = &all[k % all.len()];
            k += 1;
            kernels::cpu::compile(kernel).expect("compile")
        })
    });
    g.finish();
}

criterion_group!(fusion, benches, compile_times);
criterion_main!(fusion);
