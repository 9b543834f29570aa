//! Products with a small output and a long inner dimension (Gram matrices of
//! feature maps, `F Fᵀ`) with gemm's own threads against the inner dimension split
//! across threads (`JIT_MATMUL_SPLIT=0` turns the split off): the measurements
//! behind `extern_op::inner_split`. Medians of 8 runs, the two forms alternated.
//!
//!     cargo run --release -p kernels --example matmul_split_probe

use kernels::extern_op::ExternOp;
use kernels::{DType, HostBuffer};
use std::time::Instant;

fn main() {
    let op = ExternOp::Matmul { trans_a: false, trans_b: true };
    println!("threads {}", rayon::current_num_threads());
    for &(m, n, k) in &[
        (64usize, 64usize, 65536usize),
        (128, 128, 16384),
        (256, 256, 4096),
        (64, 256, 65536),
        (512, 128, 4096),
        (512, 512, 4096),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
        let (ab, bb) = (HostBuffer::F32(a), HostBuffer::F32(b));
        let mut times = [vec![], vec![]];
        for _round in 0..2 {
            for (form, split) in ["0", "1"].iter().enumerate() {
                std::env::set_var("JIT_MATMUL_SPLIT", split);
                let run = || op.run_cpu(&[(&ab, &[1, m, k]), (&bb, &[1, n, k])], DType::F32).unwrap();
                run();
                for _ in 0..4 {
                    let t = Instant::now();
                    run();
                    times[form].push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let med = |t: &mut Vec<f64>| {
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            t[t.len() / 2]
        };
        let (whole, split) = (med(&mut times[0]), med(&mut times[1]));
        let gflop = 2.0 * (m * n * k) as f64 / 1e6;
        println!(
            "[{m}, {k}] x [{k}, {n}]: gemm's threads {whole:.2} ms ({:.0} GFLOP/s), split {split:.2} ms ({:.0} GFLOP/s)",
            gflop / whole,
            gflop / split
        );
    }
}
