//! The direct convolution against the shifted gemms on the layer sizes of the style
//! networks and VGG19 (single image, forward): the measurements behind
//! `conv_direct::DIRECT_MAX_PAIRS`. Medians of 7 runs after 2 warm-ups.
//!
//!     cargo run --release -p kernels --example conv_direct_probe

use kernels::conv_direct::{forward, pack, DirectConv};
use kernels::extern_op::{ConvPass, ExternOp};
use kernels::{DType, HostBuffer};
mod probe;

use probe::med;
fn main() {
    for &(c, o, hp, k) in &[
        (3usize, 32usize, 520usize, 9usize),
        (3, 64, 258, 3),
        (64, 3, 258, 3),
        (32, 32, 130, 3),
        (32, 8, 258, 3),
        (8, 4, 514, 3),
        (64, 64, 258, 3),
        (64, 64, 130, 3),
        (64, 128, 130, 3),
        (128, 128, 130, 3),
        (256, 256, 66, 3),
        (512, 512, 34, 3),
        (128, 32, 257, 2),
        (128, 32, 129, 2),
    ] {
        let wp = hp;
        let plane = hp * wp;
        let shifts: Vec<usize> = (0..k * k).map(|t| (t / k) * wp + t % k).collect();
        let l = (hp - k) * wp + wp - k + 1;
        let xp: Vec<f32> = (0..c * plane).map(|i| (i % 17) as f32 * 0.1).collect();
        let mut w: Vec<f32> = (0..o * c * k * k).map(|i| (i % 13) as f32 * 0.01).collect();
        if k == 2 {
            for (i, v) in w.iter_mut().enumerate() {
                let (t, ch) = (i % 4, (i / 4) % c);
                let (py, px, ty, tx) = ((ch % 4) / 2, ch % 2, t / 2, t % 2);
                if 2 * ty + py > 2 || 2 * tx + px > 2 {
                    *v = 0.0;
                }
            }
        }
        let mut y = vec![0.0f32; o * plane];
        let s = DirectConv { c, o, plane, l, shifts: &shifts };
        let packed = pack(&s, &w);
        let d = med(|| forward(&s, &packed, &xp, &mut y));
        let op = ExternOp::Conv2dShift { pass: ConvPass::Forward, kernel: [k, k], dilation: [1, 1] };
        let (xb, wb) = (HostBuffer::F32(xp.clone()), HostBuffer::F32(w.clone()));
        let g = med(|| {
            kernels::host_pool::give(op.run_cpu(&[(&xb, &[1, c, hp, wp]), (&wb, &[o, c, k, k])], DType::F32).unwrap());
        });
        let flops = 2.0 * (o * c * k * k * l) as f64;
        println!(
            "c={c:3} o={o:3} grid={hp}^2 k={k}: direct {d:7.2} ms ({:5.1} GF/s)  extern {g:7.2} ms ({:5.1} GF/s)",
            flops / d / 1e6,
            flops / g / 1e6
        );
    }
}
