//! The input gradient of 3x3 convolutions (`ConvPass::BackwardData`) on the layer
//! sizes of the style networks' training steps and of VGG19 at 256²: the
//! measurements behind running it as a direct convolution. Medians of 7 runs after
//! 2 warm-ups (the first of which measures both forms where the choice is measured).
//! Run it once per form and compare:
//!
//!     JIT_CONV_ALGO=gemm cargo run --release -p kernels --example conv_input_grad_probe
//!     JIT_CONV_ALGO=direct cargo run --release -p kernels --example conv_input_grad_probe
//!
//! (`JIT_CONV_ALGO` fixes the form only in the measured range: up to 15 output
//! channels, or 32 with a 3x3 kernel, the direct form always runs.)

use kernels::extern_op::{ConvPass, ExternOp};
use kernels::{DType, HostBuffer};
mod probe;

use probe::med;

fn main() {
    let algo = std::env::var("JIT_CONV_ALGO").unwrap_or_else(|_| "auto".into());
    // (batch, input channels c, output channels o, padded grid side)
    for &(n, c, o, hp) in &[
        (2usize, 64usize, 64usize, 130usize),
        (2, 128, 128, 66),
        (2, 256, 256, 34),
        (2, 64, 128, 66),
        (2, 128, 256, 34),
        (1, 64, 64, 258),
        (1, 3, 64, 258),
        (2, 3, 64, 130),
        (1, 64, 3, 258),
    ] {
        let k = 3;
        let plane = hp * hp;
        // the output gradient on the grid: zero outside the valid corner
        let dy: Vec<f32> = (0..n * o * plane)
            .map(|i| {
                let p = i % plane;
                if p % hp < hp - 2 && p / hp < hp - 2 {
                    (i % 17) as f32 * 0.1
                } else {
                    0.0
                }
            })
            .collect();
        let w: Vec<f32> = (0..o * c * k * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let op = ExternOp::Conv2dShift { pass: ConvPass::BackwardData, kernel: [k, k], dilation: [1, 1] };
        let (ab, wb) = (HostBuffer::F32(dy), HostBuffer::F32(w));
        let t = med(|| {
            kernels::host_pool::give(op.run_cpu(&[(&ab, &[n, o, hp, hp]), (&wb, &[o, c, k, k])], DType::F32).unwrap());
        });
        let flops = 2.0 * (n * o * c * k * k * (hp - 2) * (hp - 2)) as f64;
        println!(
            "input gradient n={n} c={c:3} o={o:3} grid={hp}^2 ({algo}): {t:7.2} ms ({:5.1} GF/s of the valid outputs)",
            flops / t / 1e6
        );
    }
}
