//! The two forms of the convolution filter gradient on the layer sizes of the style
//! networks and VGG19 (3x3 kernels, padded grids): per-tap products over split grid
//! columns against one product over copied taps (`JIT_CONV_FILTER=split|im2col`).
//! The measurements behind the default choice in `ExternOp::Conv2dShift`'s
//! `BackwardFilter`. Medians of 7 runs after one warm-up, the two forms alternated.
//!
//!     cargo run --release -p kernels --example conv_filter_probe

use kernels::extern_op::{ConvPass, ExternOp};
use kernels::{DType, HostBuffer};
use std::time::Instant;

fn main() {
    let op = ExternOp::Conv2dShift { pass: ConvPass::BackwardFilter, kernel: [3, 3], dilation: [1, 1] };
    println!("threads {}", rayon::current_num_threads());
    for &(n, c, o, hp) in &[
        (2usize, 256usize, 256usize, 34usize),
        (2, 128, 256, 34),
        (2, 256, 512, 18),
        (1, 512, 512, 34),
        (2, 128, 128, 66),
        (1, 256, 256, 66),
        (2, 64, 64, 130),
        (1, 64, 64, 258),
    ] {
        let plane = hp * hp;
        let x: Vec<f32> = (0..n * c * plane).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let dy: Vec<f32> = (0..n * o * plane).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
        let (xb, yb) = (HostBuffer::F32(x), HostBuffer::F32(dy));
        let mut times = [vec![], vec![]];
        let mut outs = [vec![], vec![]];
        for round in 0..2 {
            for (m, form) in ["split", "im2col"].iter().enumerate() {
                std::env::set_var("JIT_CONV_FILTER", form);
                let run = || op.run_cpu(&[(&yb, &[n, o, hp, hp]), (&xb, &[n, c, hp, hp])], DType::F32).unwrap();
                let mut last = run();
                for _ in 0..if round == 0 { 3 } else { 4 } {
                    let t = Instant::now();
                    last = run();
                    times[m].push(t.elapsed().as_secs_f64() * 1e3);
                }
                outs[m] = last.as_slice::<f32>().unwrap().to_vec();
            }
        }
        let med = |t: &mut Vec<f64>| {
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            t[t.len() / 2]
        };
        let (split, im2col) = (med(&mut times[0]), med(&mut times[1]));
        let diff = outs[0].iter().zip(&outs[1]).map(|(a, b)| (a - b).abs() / (1.0 + a.abs())).fold(0f32, f32::max);
        let gflop = 2.0 * (n * o * c * 9 * ((hp - 3) * hp + hp - 2)) as f64 / 1e6;
        println!(
            "n {n} c {c} o {o} grid {hp}x{hp}: split {split:.2} ms ({:.0} GFLOP/s), im2col {im2col:.2} ms ({:.0} GFLOP/s), max rel diff {diff:.1e}",
            gflop / split,
            gflop / im2col
        );
    }
}
