//! Throughput of the reference interpreter (the oracle backend), per meta-op kind.
//! It is the baseline that the fused CPU backend will be compared against.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jit_ops::prelude::*;

fn elementwise_chain(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference/elementwise_chain");
    for n in [1usize << 12, 1 << 16] {
        let x = Var::ones(&[n], DType::F32);
        x.sync().expect("leaf");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &x, |b, x| {
            b.iter(|| {
                let mut y = x.clone();
                for _ in 0..10 {
                    y = y * 1.0001 + 0.5;
                }
                y.sync().expect("realise");
            })
        });
    }
    g.finish();
}

fn softmax_rows(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference/softmax");
    let x = Var::randn(&[64, 256], DType::F32).expect("randn");
    x.sync().expect("leaf");
    g.throughput(Throughput::Elements(64 * 256));
    g.bench_function("64x256", |b| b.iter(|| x.softmax(-1).expect("softmax").sync().expect("realise")));
    g.finish();
}

criterion_group!(benches, elementwise_chain, softmax_rows);
criterion_main!(benches);
