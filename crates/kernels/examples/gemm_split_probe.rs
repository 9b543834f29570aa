//! Products split into one column block per thread (single-threaded gemms) against
//! the gemm crate's own threads (`JIT_GEMM_SPLIT=0`), on the forward and
//! input-gradient products of 3x3 convolutions of the style networks and VGG19
//! (the shifted gemms, `JIT_CONV_ALGO=gemm`): the measurements behind
//! `extern_op::gemm_view_on`. Medians of 6 runs, the two forms alternated; the
//! results must be the same bits.
//!
//!     cargo run --release -p kernels --example gemm_split_probe

use kernels::extern_op::{ConvPass, ExternOp};
use kernels::{DType, HostBuffer};
use std::time::Instant;
fn main() {
    std::env::set_var("JIT_CONV_ALGO", "gemm");
    println!("threads {}", rayon::current_num_threads());
    for &(n, c, o, hp) in &[
        (2usize, 64usize, 64usize, 130usize),
        (1, 64, 64, 258),
        (2, 128, 128, 66),
        (2, 256, 256, 34),
        (1, 512, 512, 34),
        (2, 256, 512, 18),
    ] {
        let plane = hp * hp;
        let x: Vec<f32> = (0..n * c * plane).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let w: Vec<f32> = (0..o * c * 9).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
        let dy: Vec<f32> = (0..n * o * plane).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
        let (xb, wb, yb) = (HostBuffer::F32(x), HostBuffer::F32(w), HostBuffer::F32(dy));
        for pass in [ConvPass::Forward, ConvPass::BackwardData] {
            let op = ExternOp::Conv2dShift { pass, kernel: [3, 3], dilation: [1, 1] };
            let mut times = [vec![], vec![]];
            let mut outs = [vec![], vec![]];
            for _ in 0..2 {
                for (mi, mode) in ["0", "1"].iter().enumerate() {
                    std::env::set_var("JIT_GEMM_SPLIT", mode);
                    let run = || match pass {
                        ConvPass::Forward => {
                            op.run_cpu(&[(&xb, &[n, c, hp, hp]), (&wb, &[o, c, 3, 3])], DType::F32).unwrap()
                        }
                        _ => op.run_cpu(&[(&yb, &[n, o, hp, hp]), (&wb, &[o, c, 3, 3])], DType::F32).unwrap(),
                    };
                    let mut last = run();
                    for _ in 0..3 {
                        let t = Instant::now();
                        last = run();
                        times[mi].push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    outs[mi] = last.as_slice::<f32>().unwrap().to_vec();
                }
            }
            let med = |t: &mut Vec<f64>| {
                t.sort_by(|a, b| a.partial_cmp(b).unwrap());
                t[t.len() / 2]
            };
            let (x, y) = (med(&mut times[0]), med(&mut times[1]));
            assert!(outs[0] == outs[1], "the split product computed other bits");
            let gf = 2.0 * (n * o * c * 9 * ((hp - 3) * hp + hp - 2)) as f64 / 1e6;
            println!("{pass:?} n{n} c{c} o{o} hp{hp}: gemm's threads {x:.2} ms ({:.0} GFLOP/s), split {y:.2} ms ({:.0} GFLOP/s)", gf / x, gf / y);
        }
    }
}
